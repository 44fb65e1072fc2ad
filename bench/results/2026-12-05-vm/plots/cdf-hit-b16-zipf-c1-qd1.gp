set terminal png size 900,560
set output 'bench/results/2026-12-05-vm/plots/cdf-hit-b16-zipf-c1-qd1.png'
set title 'latency CDF: hit, f32 x 128, batch 16, zipf ids, 1 client(s)'
set logscale x
set xlabel 'latency per call (us)'
set ylabel 'fraction of calls'
set key bottom right
set grid
plot 'bench/results/2026-12-05-vm/plots/cdf-hit-b16-zipf-c1-qd1-embcache.dat' using 1:2 with lines lw 2 title 'embcache', 'bench/results/2026-12-05-vm/plots/cdf-hit-b16-zipf-c1-qd1-flat.dat' using 1:2 with lines lw 2 title 'flat', 'bench/results/2026-12-05-vm/plots/cdf-hit-b16-zipf-c1-qd1-hashmap.dat' using 1:2 with lines lw 2 title 'hashmap', 'bench/results/2026-12-05-vm/plots/cdf-hit-b16-zipf-c1-qd1-mmap.dat' using 1:2 with lines lw 2 title 'mmap', 'bench/results/2026-12-05-vm/plots/cdf-hit-b16-zipf-c1-qd1-mmap-random.dat' using 1:2 with lines lw 2 title 'mmap-random', 'bench/results/2026-12-05-vm/plots/cdf-hit-b16-zipf-c1-qd1-redis-mget.dat' using 1:2 with lines lw 2 title 'redis-mget', 'bench/results/2026-12-05-vm/plots/cdf-hit-b16-zipf-c1-qd1-redis-pipeline.dat' using 1:2 with lines lw 2 title 'redis-pipeline', 'bench/results/2026-12-05-vm/plots/cdf-hit-b16-zipf-c1-qd1-memcached.dat' using 1:2 with lines lw 2 title 'memcached', 'bench/results/2026-12-05-vm/plots/cdf-hit-b16-zipf-c1-qd1-memcached-get.dat' using 1:2 with lines lw 2 title 'memcached-get', 'bench/results/2026-12-05-vm/plots/cdf-hit-b16-zipf-c1-qd1-memcached-meta.dat' using 1:2 with lines lw 2 title 'memcached-meta'
