set terminal png size 900,560
set output 'bench/results/2026-11-24-vm/plots/cdf-mixed-b256-zipf-c1-qd1.png'
set title 'latency CDF: mixed, batch 256, zipf ids, 1 client(s)'
set logscale x
set xlabel 'latency per call (us)'
set ylabel 'fraction of calls'
set key bottom right
set grid
plot 'bench/results/2026-11-24-vm/plots/cdf-mixed-b256-zipf-c1-qd1-embcache.dat' using 1:2 with lines lw 2 title 'embcache'
