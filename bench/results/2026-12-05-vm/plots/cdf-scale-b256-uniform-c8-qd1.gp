set terminal png size 900,560
set output 'bench/results/2026-12-05-vm/plots/cdf-scale-b256-uniform-c8-qd1.png'
set title 'latency CDF: scale, f32 x 128, batch 256, uniform ids, 8 client(s)'
set logscale x
set xlabel 'latency per call (us)'
set ylabel 'fraction of calls'
set key bottom right
set grid
plot 'bench/results/2026-12-05-vm/plots/cdf-scale-b256-uniform-c8-qd1-embcache.dat' using 1:2 with lines lw 2 title 'embcache'
