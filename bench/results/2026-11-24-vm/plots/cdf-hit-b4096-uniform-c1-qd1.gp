set terminal png size 900,560
set output 'bench/results/2026-11-24-vm/plots/cdf-hit-b4096-uniform-c1-qd1.png'
set title 'latency CDF: hit, batch 4096, uniform ids, 1 client(s)'
set logscale x
set xlabel 'latency per call (us)'
set ylabel 'fraction of calls'
set key bottom right
set grid
plot 'bench/results/2026-11-24-vm/plots/cdf-hit-b4096-uniform-c1-qd1-embcache.dat' using 1:2 with lines lw 2 title 'embcache', 'bench/results/2026-11-24-vm/plots/cdf-hit-b4096-uniform-c1-qd1-flat.dat' using 1:2 with lines lw 2 title 'flat', 'bench/results/2026-11-24-vm/plots/cdf-hit-b4096-uniform-c1-qd1-hashmap.dat' using 1:2 with lines lw 2 title 'hashmap', 'bench/results/2026-11-24-vm/plots/cdf-hit-b4096-uniform-c1-qd1-redis-mget.dat' using 1:2 with lines lw 2 title 'redis-mget', 'bench/results/2026-11-24-vm/plots/cdf-hit-b4096-uniform-c1-qd1-redis-pipeline.dat' using 1:2 with lines lw 2 title 'redis-pipeline', 'bench/results/2026-11-24-vm/plots/cdf-hit-b4096-uniform-c1-qd1-memcached.dat' using 1:2 with lines lw 2 title 'memcached'
