set terminal png size 900,560
set output 'bench/results/2026-12-05-vm/plots/cdf-rowmiss-b1-uniform-c32-qd32.png'
set title 'latency CDF: rowmiss, f32 x 128, batch 1, uniform ids, 32 client(s)'
set logscale x
set xlabel 'latency per call (us)'
set ylabel 'fraction of calls'
set key bottom right
set grid
plot 'bench/results/2026-12-05-vm/plots/cdf-rowmiss-b1-uniform-c32-qd32-embcache.dat' using 1:2 with lines lw 2 title 'embcache'
