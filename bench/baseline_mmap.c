/*
 * baseline_mmap.c - the mmap baselines of embcache-bench (baseline.h): the
 * table's .npy file mapped read-only and shared (PROT_READ, MAP_SHARED),
 * which is what np.load(path, mmap_mode='r') and safetensors hand a user;
 * a gather is a memcpy of row id from map + data_off + id * row_bytes, and
 * every miss is a page fault the kernel serves from the page cache or the
 * disk.
 *
 *   mmap         the mapping as is: the kernel's fault-around and readahead
 *                bring neighbouring pages in with each fault;
 *   mmap-random  madvise(MADV_RANDOM) on the mapping: no readahead, each
 *                fault reads what it needs.
 *
 * prefault() reads one byte of every page (the hit scenario's warm-up: the
 * whole file resident, these are floors there). In the mixed and large
 * scenarios the bench drops the file's pages before each run and holds the
 * rest of the machine's memory away (bench/memhold.h), so the mapping runs
 * with the memory embcache had. Single-threaded, one handle per process.
 */
#include "baseline.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct ec_baseline {
    bool random;
    int fd;
    const unsigned char *map;
    size_t map_len;
    uint64_t data_off, rows;
    size_t row_bytes;
    char path[PATH_MAX];
};

static int mm_open_kind(ec_baseline **out, bool random)
{
    ec_baseline *b = calloc(1, sizeof *b);
    if (b == NULL)
        return -1;
    b->random = random;
    b->fd = -1;
    *out = b;
    return 0;
}

static int mm_open(ec_baseline **out, char *note, size_t note_len)
{
    (void)note;
    (void)note_len;
    return mm_open_kind(out, false);
}

static int mm_random_open(ec_baseline **out, char *note, size_t note_len)
{
    (void)note;
    (void)note_len;
    return mm_open_kind(out, true);
}

static void mm_unmap(ec_baseline *b)
{
    if (b->map != NULL)
        munmap((void *)b->map, b->map_len);
    if (b->fd >= 0)
        close(b->fd);
    b->map = NULL;
    b->fd = -1;
}

static int mm_load_file(ec_baseline *b, const char *path, uint64_t data_off, uint64_t rows,
                        size_t row_bytes)
{
    struct stat st;

    mm_unmap(b);
    b->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (b->fd < 0 || fstat(b->fd, &st) != 0) {
        fprintf(stderr, "mmap: cannot open %s: %s\n", path, strerror(errno));
        mm_unmap(b);
        return -1;
    }
    if (row_bytes == 0 || rows > (UINT64_MAX - data_off) / row_bytes ||
        (uint64_t)st.st_size < data_off + rows * row_bytes) {
        fprintf(stderr, "mmap: %s holds %lld bytes, fewer than %" PRIu64 " rows of %zu after "
                        "offset %" PRIu64 "\n", path, (long long)st.st_size, rows, row_bytes,
                data_off);
        mm_unmap(b);
        return -1;
    }
    b->map_len = (size_t)st.st_size;
    void *m = mmap(NULL, b->map_len, PROT_READ, MAP_SHARED, b->fd, 0);
    if (m == MAP_FAILED) {
        fprintf(stderr, "mmap: mmap of %s: %s\n", path, strerror(errno));
        b->map = NULL;
        mm_unmap(b);
        return -1;
    }
    b->map = m;
    if (b->random && madvise(m, b->map_len, MADV_RANDOM) != 0) {
        fprintf(stderr, "mmap-random: madvise(MADV_RANDOM): %s\n", strerror(errno));
        mm_unmap(b);
        return -1;
    }
    b->data_off = data_off;
    b->rows = rows;
    b->row_bytes = row_bytes;
    snprintf(b->path, sizeof b->path, "%s", path);
    return 0;
}

static int mm_gather(ec_baseline *b, const int64_t *ids, size_t n, void *out)
{
    unsigned char *o = out;
    const size_t rb = b->row_bytes;
    const unsigned char *base = b->map + b->data_off;

    if (b->map == NULL)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if ((uint64_t)ids[i] >= b->rows)
            return -1;
        memcpy(o + i * rb, base + (uint64_t)ids[i] * rb, rb);
    }
    return 0;
}

static int mm_prefault(ec_baseline *b)
{
    volatile unsigned char sink = 0;
    long ps = sysconf(_SC_PAGESIZE);

    if (b->map == NULL || ps <= 0)
        return -1;
    for (size_t off = 0; off < b->map_len; off += (size_t)ps)
        sink ^= b->map[off];
    (void)sink;
    return 0;
}

static void mm_close(ec_baseline *b)
{
    if (b == NULL)
        return;
    mm_unmap(b);
    free(b);
}

static void mm_describe(ec_baseline *b, char *buf, size_t len)
{
    snprintf(buf, len, "page cache: PROT_READ MAP_SHARED mapping of the .npy%s",
             b->random ? ", MADV_RANDOM" : "");
}

const ec_baseline_ops ec_baseline_mmap_ops = {
    .name = "mmap",
    .open = mm_open,
    .gather = mm_gather,
    .close = mm_close,
    .load_file = mm_load_file,
    .prefault = mm_prefault,
    .describe = mm_describe,
};

const ec_baseline_ops ec_baseline_mmap_random_ops = {
    .name = "mmap-random",
    .open = mm_random_open,
    .gather = mm_gather,
    .close = mm_close,
    .load_file = mm_load_file,
    .prefault = mm_prefault,
    .describe = mm_describe,
};
