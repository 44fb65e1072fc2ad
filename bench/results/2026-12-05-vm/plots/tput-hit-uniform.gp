set terminal png size 900,560
set output 'bench/results/2026-12-05-vm/plots/tput-hit-uniform.png'
set title 'hit: rows/s vs batch size, uniform ids, one client'
set logscale xy
set xlabel 'batch size (rows)'
set ylabel 'rows/s'
set key bottom right
set grid
plot 'bench/results/2026-12-05-vm/plots/tput-hit-uniform-embcache.dat' using 1:2 with linespoints lw 2 title 'embcache', 'bench/results/2026-12-05-vm/plots/tput-hit-uniform-flat.dat' using 1:2 with linespoints lw 2 title 'flat', 'bench/results/2026-12-05-vm/plots/tput-hit-uniform-hashmap.dat' using 1:2 with linespoints lw 2 title 'hashmap', 'bench/results/2026-12-05-vm/plots/tput-hit-uniform-mmap.dat' using 1:2 with linespoints lw 2 title 'mmap', 'bench/results/2026-12-05-vm/plots/tput-hit-uniform-mmap-random.dat' using 1:2 with linespoints lw 2 title 'mmap-random', 'bench/results/2026-12-05-vm/plots/tput-hit-uniform-redis-mget.dat' using 1:2 with linespoints lw 2 title 'redis-mget', 'bench/results/2026-12-05-vm/plots/tput-hit-uniform-redis-pipeline.dat' using 1:2 with linespoints lw 2 title 'redis-pipeline', 'bench/results/2026-12-05-vm/plots/tput-hit-uniform-memcached.dat' using 1:2 with linespoints lw 2 title 'memcached'
