/*
 * test_segment.c - unit tests of the shared segment (shm/segment.c): the
 * layout plan, create/reopen round trips, and every way a recorded segment
 * can be wrong (missing record, vanished segment, garbage record, wrong
 * mode, foreign magic, wrong layout version, truncation), the read-only
 * descriptor and mapping handed to clients, header validation against
 * corrupted fields, and a full /dev/shm. Single process; real POSIX shm
 * segments in /dev/shm, records in a temporary data directory.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "shm/index.h"
#include "shm/segment.h"
#include "tests/testutil.h"

#define MiB (1ull << 20)
#define SEG_SIZE (4 * MiB)

typedef struct ctx {
    char *dir;
} ctx;

static int setup(void **state)
{
    ctx *c = calloc(1, sizeof(*c));
    c->dir = ect_tmpdir("ec-segment");
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    ctx *c = *state;
    ect_rmtree(c->dir);
    free(c->dir);
    free(c);
    return 0;
}

static char *record_path(const ctx *c)
{
    char *p;
    assert_true(asprintf(&p, "%s/%s", c->dir, EC_SEGMENT_RECORD) > 0);
    return p;
}

static bool shm_exists(const char *name)
{
    int fd = shm_open(name, O_RDONLY, 0);
    if (fd < 0)
        return false;
    close(fd);
    return true;
}

/* Open the named segment read-write behind the library's back (to damage it). */
static int raw_open(const char *name)
{
    int fd = shm_open(name, O_RDWR, 0);
    assert_true(fd >= 0);
    return fd;
}

static void *raw_map(int fd, size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(p != MAP_FAILED);
    return p;
}

/* Create a segment, close it, and leave its name for the test to damage. */
static void create_closed(ctx *c, char name[EC_SEGMENT_NAME_MAX])
{
    ec_segment seg;
    assert_int_equal(ec_segment_create(c->dir, SEG_SIZE, &seg), 0);
    memcpy(name, seg.name, EC_SEGMENT_NAME_MAX);
    ec_segment_close(&seg);
}

/* ------------------------------------------------------------------ */

static void check_plan(uint64_t size)
{
    uint64_t slots, off, dsize;
    assert_int_equal(ec_segment_plan(size, &slots, &off, &dsize), 0);
    assert_true(slots >= EC_SHM_MIN_SLOTS);
    assert_int_equal(slots & (slots - 1), 0);
    assert_true(slots >= 2 * (dsize / EC_SHM_PAGE));
    assert_true(EC_SHM_HEADER_SIZE + slots * sizeof(ec_index_entry) <= off);
    assert_int_equal(off % EC_SHM_PAGE, 0);
    assert_int_equal(dsize % EC_SHM_PAGE, 0);
    assert_true(dsize > 0);
    assert_true(off + dsize <= size);
    /* Nothing wasted but the alignment padding. */
    assert_true(size - off - dsize < EC_SHM_PAGE);
    /* The item index sits after the partition index and holds a data area
     * full of default-sized items at no more than 85% of its slots. */
    {
        ec_segment_geometry g;
        assert_int_equal(ec_segment_plan_geometry(size, 0, EC_ITEM_BYTES_DEFAULT, &g), 0);
        assert_int_equal(g.index_slots, slots);
        assert_int_equal(g.data_off, off);
        assert_int_equal(g.item_off, EC_SHM_HEADER_SIZE + slots * sizeof(ec_index_entry));
        assert_true(g.item_off + g.item_buckets * sizeof(ec_item_bucket) <= off);
        assert_true((double)(dsize / (EC_ITEM_BYTES_DEFAULT + 8)) <=
                    0.85 * (double)(g.item_buckets * EC_ITEM_WAYS) + 1);
        /* and costs at most 5% of the values it can index, their keys
         * included (the bound for 512-byte rows) */
        uint64_t items = dsize / (EC_ITEM_BYTES_DEFAULT + 8);
        if (items >= 65536)
            assert_true((double)(g.item_buckets * sizeof(ec_item_bucket) + items * 8) <=
                        0.05 * (double)(items * EC_ITEM_BYTES_DEFAULT));
        assert_int_equal(ec_segment_plan_geometry(size, 0, 0, &g), 0);
        assert_int_equal(g.item_buckets, 0);
    }
}

static void test_plan(void **state)
{
    uint64_t slots = 7, off = 7, dsize = 7;
    (void)state;

    assert_int_equal(ec_segment_plan(0, &slots, &off, &dsize), EC_EINVAL);
    assert_int_equal(ec_segment_plan(MiB - EC_SHM_PAGE, &slots, &off, &dsize), EC_EINVAL);
    assert_int_equal(ec_segment_plan(MiB + 1, &slots, &off, &dsize), EC_EINVAL);
    assert_non_null(strstr(ec_last_error(), "multiple of 4096"));
    assert_int_equal(ec_segment_plan(UINT64_MAX - 4095, &slots, &off, &dsize), EC_EINVAL);
    assert_int_equal(slots, 7); /* outputs untouched on failure */

    /* 1 MiB: 4 KiB alignment (2 MiB would not fit). */
    assert_int_equal(ec_segment_plan(MiB, &slots, &off, &dsize), 0);
    assert_true(off < MiB);
    check_plan(MiB);
    /* 64 MiB: 16K pages -> 32K slots (1 MiB of index), 1.3 MiB of item
     * index, data on 4 MiB. */
    assert_int_equal(ec_segment_plan(64 * MiB, &slots, &off, &dsize), 0);
    assert_int_equal(slots, 32768);
    assert_int_equal(off, 4 * MiB);
    assert_int_equal(dsize, 60 * MiB);
    check_plan(64 * MiB);
    /* 1 GiB and 1 TiB (arithmetic only). */
    assert_int_equal(ec_segment_plan(1024 * MiB, &slots, &off, &dsize), 0);
    assert_int_equal(off % (2 * MiB), 0);
    check_plan(1024 * MiB);
    check_plan(1024 * 1024 * MiB);
    /* Many sizes in between, including awkward ones near powers of two. */
    for (uint64_t sz = MiB; sz < 300 * MiB; sz += 4096 * 997)
        check_plan(sz);
    for (int b = 20; b < 45; b++) {
        check_plan(1ull << b);
        check_plan((1ull << b) + EC_SHM_PAGE);
        check_plan((1ull << (b + 1)) - EC_SHM_PAGE);
    }
}

static void test_create_reopen(void **state)
{
    ctx *c = *state;
    ec_segment seg, again;
    char *rec = record_path(c), *text;
    struct stat st;
    size_t len;
    uint64_t slots, off, dsize;

    assert_int_equal(ec_segment_create(c->dir, SEG_SIZE, &seg), 0);
    /* Name: /embcache- + 32 lowercase hex. */
    assert_int_equal(strlen(seg.name), 10 + 32);
    assert_memory_equal(seg.name, "/embcache-", 10);
    for (int i = 10; i < 42; i++)
        assert_non_null(strchr("0123456789abcdef", seg.name[i]));
    /* The record holds the name. */
    text = ect_read_file(rec, &len);
    assert_non_null(text);
    assert_int_equal(len, strlen(seg.name) + 1);
    assert_memory_equal(text, seg.name, strlen(seg.name));
    assert_int_equal(text[len - 1], '\n');
    free(text);
    /* No temporary file is left behind. */
    {
        char *tmp;
        assert_true(asprintf(&tmp, "%s.tmp", rec) > 0);
        assert_int_equal(access(tmp, F_OK), -1);
        free(tmp);
    }
    /* Owner and mode. */
    assert_int_equal(fstat(seg.fd, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(st.st_uid, geteuid());
    assert_int_equal(st.st_size, SEG_SIZE);
    /* Header and derived pointers. */
    assert_true(seg.writable);
    assert_int_equal(seg.size, SEG_SIZE);
    assert_ptr_equal(seg.hdr, seg.base);
    assert_int_equal(seg.hdr->magic, EC_SHM_MAGIC);
    assert_int_equal(seg.hdr->layout_version, EC_SHM_LAYOUT_VERSION);
    assert_int_equal(seg.hdr->header_size, EC_SHM_HEADER_SIZE);
    assert_int_equal(seg.hdr->segment_size, SEG_SIZE);
    assert_int_equal(atomic_load(&seg.hdr->generation), 1);
    assert_int_equal(atomic_load(&seg.hdr->daemon_pid), (uint32_t)getpid());
    assert_true(seg.hdr->created_unix > 1600000000u);
    assert_int_equal(ec_segment_plan(SEG_SIZE, &slots, &off, &dsize), 0);
    assert_int_equal(seg.hdr->index_slots, slots);
    assert_int_equal(seg.index_slots, slots);
    assert_int_equal(seg.index_mask, slots - 1);
    assert_int_equal(seg.hdr->data_off, off);
    assert_int_equal(seg.data_size, dsize);
    assert_ptr_equal(seg.index, seg.base + EC_SHM_HEADER_SIZE);
    assert_ptr_equal(seg.data, seg.base + off);
    /* The index starts empty. */
    for (uint64_t i = 0; i < seg.index_slots; i++)
        assert_int_equal(atomic_load(&seg.index[i].key), 0);

    /* Data survives close + reopen (the daemon restarts, the segment stays). */
    memcpy(seg.data + 12345, "warm restart", 12);
    atomic_store(&seg.hdr->generation, 7);
    ec_segment_close(&seg);
    assert_int_equal(seg.fd, -1);
    assert_null(seg.base);
    ec_segment_close(&seg); /* twice is harmless */

    assert_int_equal(ec_segment_reopen(c->dir, &again), 0);
    assert_true(again.writable);
    assert_string_equal(again.name, seg.name);
    assert_int_equal(again.size, SEG_SIZE);
    assert_memory_equal(again.data + 12345, "warm restart", 12);
    assert_int_equal(atomic_load(&again.hdr->generation), 7); /* not bumped */
    assert_int_equal(again.index_slots, slots);

    /* Destroy removes the name and the record; the mapping stays usable. */
    assert_int_equal(ec_segment_destroy(&again, c->dir), 0);
    assert_false(shm_exists(again.name));
    assert_int_equal(access(rec, F_OK), -1);
    assert_memory_equal(again.data + 12345, "warm restart", 12);
    ec_segment_close(&again);
    assert_int_equal(ec_segment_reopen(c->dir, &again), EC_ENOENT);
    free(rec);
}

/* Device tables: laid out after the host index, validated, and usable
 * through a device view whose bounds are the slab's, not the data area's. */
static void test_device_tables(void **state)
{
    ctx *c = *state;
    ec_segment seg, dv, ro;
    uint64_t slots, off, dsize, slots2, off2, dsize2;
    ec_index_ref ref;
    int rofd;

    assert_int_equal(ec_segment_plan(SEG_SIZE, &slots, &off, &dsize), 0);
    assert_int_equal(ec_segment_plan_ex(SEG_SIZE, 2, &slots2, &off2, &dsize2), 0);
    assert_true(off2 >= EC_SHM_HEADER_SIZE + 3 * slots2 * sizeof(ec_index_entry));
    assert_true(dsize2 <= dsize);
    assert_int_equal(ec_segment_plan_ex(SEG_SIZE, EC_SHM_MAX_DEVICES + 1, &slots2, &off2,
                                        &dsize2), EC_EINVAL);

    assert_int_equal(ec_segment_create_ex(c->dir, SEG_SIZE, 2, &seg), 0);
    assert_int_equal(seg.hdr->device_tables, 2);
    assert_int_equal(seg.hdr->dev[1].index_off,
                     EC_SHM_HEADER_SIZE + 2 * seg.index_slots * sizeof(ec_index_entry));
    assert_int_equal(ec_segment_device_view(&seg, 2, 1 * MiB, &dv), EC_EINVAL);
    assert_int_equal(ec_segment_device_view(&seg, 1, 1 * MiB, &dv), 0);
    /* An entry past the slab is refused; one inside is found in the device
     * table only, not in the host index. */
    assert_int_equal(ec_index_insert(&dv, 7, 3, 1 * MiB, 4096), EC_EINVAL);
    assert_int_equal(ec_index_insert(&dv, 7, 3, 8192, 4096), 0);
    assert_int_equal(ec_index_lookup(&dv, 7, 3, &ref), 1);
    assert_int_equal(ref.offset, 8192);
    assert_int_equal(ec_index_lookup(&seg, 7, 3, &ref), 0);

    /* A client's read-only mapping validates the tables; a moved table is
     * corruption. */
    assert_int_equal(ec_segment_open_readonly(&seg, &rofd), 0);
    assert_int_equal(ec_segment_map_fd(rofd, &ro), 0);
    ec_segment_close(&ro);
    seg.hdr->dev[1].index_off += 32;
    assert_int_equal(ec_segment_map_fd(rofd, &ro), EC_ECORRUPT);
    assert_non_null(strstr(ec_last_error(), "device table 1"));
    seg.hdr->dev[1].index_off -= 32;
    seg.hdr->device_tables = EC_SHM_MAX_DEVICES + 1;
    assert_int_equal(ec_segment_map_fd(rofd, &ro), EC_ECORRUPT);
    seg.hdr->device_tables = 2;
    close(rofd);
    assert_int_equal(ec_segment_destroy(&seg, c->dir), 0);
}

static void test_create_invalid(void **state)
{
    ctx *c = *state;
    ec_segment seg;
    char *missing;

    assert_int_equal(ec_segment_create(c->dir, 12345, &seg), EC_EINVAL);
    assert_int_equal(ec_segment_create(c->dir, 64 * 1024, &seg), EC_EINVAL);
    assert_int_equal(ec_segment_create(NULL, SEG_SIZE, &seg), EC_EINVAL);
    assert_int_equal(ec_segment_create("", SEG_SIZE, &seg), EC_EINVAL);
    assert_int_equal(ec_segment_create(c->dir, SEG_SIZE, NULL), EC_EINVAL);
    /* A data dir that does not exist: the segment is not left behind. */
    assert_true(asprintf(&missing, "%s/nope/deeper", c->dir) > 0);
    assert_int_equal(ec_segment_create(missing, SEG_SIZE, &seg), EC_EIO);
    assert_non_null(strstr(ec_last_error(), "nope"));
    free(missing);
}

static void test_umask_proof(void **state)
{
    ctx *c = *state;
    ec_segment seg;
    struct stat st;
    mode_t old = umask(0);

    assert_int_equal(ec_segment_create(c->dir, SEG_SIZE, &seg), 0);
    assert_int_equal(fstat(seg.fd, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(ec_segment_destroy(&seg, c->dir), 0);
    ec_segment_close(&seg);
    umask(0277); /* would strip the owner's write bit */
    assert_int_equal(ec_segment_create(c->dir, SEG_SIZE, &seg), 0);
    assert_int_equal(fstat(seg.fd, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    umask(old);
    ec_segment_close(&seg);
    assert_int_equal(ec_segment_reopen(c->dir, &seg), 0);
    assert_int_equal(ec_segment_destroy(&seg, c->dir), 0);
    ec_segment_close(&seg);
}

static void test_reopen_missing(void **state)
{
    ctx *c = *state;
    ec_segment seg;
    char name[EC_SEGMENT_NAME_MAX];
    char *rec = record_path(c);

    /* No record at all. */
    assert_int_equal(ec_segment_reopen(c->dir, &seg), EC_ENOENT);
    assert_non_null(strstr(ec_last_error(), "no segment is recorded"));
    /* A record whose segment vanished (e.g. after a reboot). */
    create_closed(c, name);
    assert_int_equal(shm_unlink(name), 0);
    assert_int_equal(ec_segment_reopen(c->dir, &seg), EC_ENOENT);
    assert_non_null(strstr(ec_last_error(), "no longer exists"));
    /* A well-formed name that never existed. */
    assert_int_equal(ect_write_file(rec, "/embcache-0123456789abcdef0123456789abcdef\n", 43), 0);
    assert_int_equal(ec_segment_reopen(c->dir, &seg), EC_ENOENT);
    free(rec);
}

static void test_reopen_bad_record(void **state)
{
    static const char *const bad[] = {
        "",
        "\n",
        "/embcache-0123\n",
        "/embcache-0123456789ABCDEF0123456789abcdef\n",    /* upper case */
        "/embcache-0123456789abcdef0123456789abcdef0\n",   /* too long */
        "/embcache-0123456789abcdef0123456789abcdeg\n",    /* not hex */
        "/etc/passwd\n",
        "/other-0123456789abcdef0123456789abcdef012\n",
        "/embcache-../../../../../../../../dev/zero12\n",
        "/embcache-0123456789abcdef0123456789abcdef\n\n",
    };
    ctx *c = *state;
    ec_segment seg;
    char *rec = record_path(c);
    char big[512];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(ect_write_file(rec, bad[i], strlen(bad[i])), 0);
        if (ec_segment_reopen(c->dir, &seg) != EC_ECORRUPT)
            fail_msg("record '%s' was not refused", bad[i]);
        assert_non_null(strstr(ec_last_error(), "valid segment name"));
    }
    /* With a NUL inside. */
    assert_int_equal(ect_write_file(rec, "/embcache-0123456789abcdef\0" "0123456789abcde\n", 43),
                     0);
    assert_int_equal(ec_segment_reopen(c->dir, &seg), EC_ECORRUPT);
    /* Far too long. */
    memset(big, 'a', sizeof(big));
    assert_int_equal(ect_write_file(rec, big, sizeof(big)), 0);
    assert_int_equal(ec_segment_reopen(c->dir, &seg), EC_ECORRUPT);
    /* A directory where the record should be. */
    assert_int_equal(unlink(rec), 0);
    assert_int_equal(mkdir(rec, 0700), 0);
    assert_true(ec_segment_reopen(c->dir, &seg) < 0);
    assert_int_equal(rmdir(rec), 0);
    free(rec);
}

static void test_reopen_wrong_mode(void **state)
{
    ctx *c = *state;
    ec_segment seg;
    char name[EC_SEGMENT_NAME_MAX];
    int fd;

    create_closed(c, name);
    fd = raw_open(name);
    assert_int_equal(fchmod(fd, 0644), 0);
    assert_int_equal(ec_segment_reopen(c->dir, &seg), EC_EPERM);
    assert_non_null(strstr(ec_last_error(), "mode 0644"));
    assert_int_equal(fchmod(fd, 0660), 0);
    assert_int_equal(ec_segment_reopen(c->dir, &seg), EC_EPERM);
    assert_int_equal(fchmod(fd, 0400), 0);
    assert_true(ec_segment_reopen(c->dir, &seg) < 0); /* EPERM (or EACCES -> EPERM) */
    assert_int_equal(fchmod(fd, 0600), 0);
    assert_int_equal(ec_segment_reopen(c->dir, &seg), 0);
    assert_int_equal(ec_segment_destroy(&seg, c->dir), 0);
    ec_segment_close(&seg);
    close(fd);
}

static void test_reopen_foreign(void **state)
{
    ctx *c = *state;
    ec_segment seg;
    char name[EC_SEGMENT_NAME_MAX];
    ec_shm_header *h;
    int fd;

    create_closed(c, name);
    fd = raw_open(name);
    h = raw_map(fd, SEG_SIZE);
    memcpy(&h->magic, "GARBAGE!", 8);
    assert_int_equal(ec_segment_reopen(c->dir, &seg), EC_ECORRUPT);
    assert_non_null(strstr(ec_last_error(), "not an embcache segment"));
    /* A client mapping it is refused too. */
    assert_int_equal(ec_segment_map_fd(fd, &seg), EC_ECORRUPT);
    /* All zero (a fresh shm object of someone else's). */
    memset(h, 0, EC_SHM_HEADER_SIZE);
    assert_int_equal(ec_segment_reopen(c->dir, &seg), EC_ECORRUPT);
    munmap(h, SEG_SIZE);
    close(fd);
    assert_int_equal(shm_unlink(name), 0);
}

static void test_reopen_wrong_version(void **state)
{
    ctx *c = *state;
    ec_segment seg;
    char name[EC_SEGMENT_NAME_MAX];
    ec_shm_header *h;
    int fd, rofd;

    create_closed(c, name);
    fd = raw_open(name);
    h = raw_map(fd, SEG_SIZE);
    h->layout_version = EC_SHM_LAYOUT_VERSION + 1;
    assert_int_equal(ec_segment_reopen(c->dir, &seg), EC_EVERSION);
    {
        char want[64];
        snprintf(want, sizeof(want), "layout version is %u", EC_SHM_LAYOUT_VERSION + 1);
        assert_non_null(strstr(ec_last_error(), want));
    }
    rofd = shm_open(name, O_RDONLY, 0);
    assert_true(rofd >= 0);
    assert_int_equal(ec_segment_map_fd(rofd, &seg), EC_EVERSION);
    close(rofd);
    assert_int_equal(ec_segment_validate(h, SEG_SIZE), EC_EVERSION);
    h->layout_version = 0;
    assert_int_equal(ec_segment_validate(h, SEG_SIZE), EC_EVERSION);
    h->layout_version = EC_SHM_LAYOUT_VERSION;
    assert_int_equal(ec_segment_validate(h, SEG_SIZE), 0);
    assert_int_equal(ec_segment_reopen(c->dir, &seg), 0);
    ec_segment_close(&seg);
    munmap(h, SEG_SIZE);
    close(fd);
    assert_int_equal(shm_unlink(name), 0);
}

static void test_reopen_truncated(void **state)
{
    ctx *c = *state;
    ec_segment seg;
    char name[EC_SEGMENT_NAME_MAX];
    int fd;

    create_closed(c, name);
    fd = raw_open(name);
    assert_int_equal(ftruncate(fd, 2 * MiB), 0);
    assert_int_equal(ec_segment_reopen(c->dir, &seg), EC_ECORRUPT);
    assert_non_null(
        strstr(ec_last_error(), "segment is truncated: header says 4194304 bytes, mapping has 2097152"));
    assert_int_equal(ec_segment_map_fd(fd, &seg), EC_ECORRUPT);
    /* Smaller than the header: refused before mapping. */
    assert_int_equal(ftruncate(fd, 100), 0);
    assert_int_equal(ec_segment_reopen(c->dir, &seg), EC_ECORRUPT);
    assert_non_null(strstr(ec_last_error(), "truncated"));
    assert_int_equal(ec_segment_map_fd(fd, &seg), EC_ECORRUPT);
    assert_int_equal(ftruncate(fd, 0), 0);
    assert_int_equal(ec_segment_reopen(c->dir, &seg), EC_ECORRUPT);
    /* Grown: the size no longer matches the header either. */
    assert_int_equal(ftruncate(fd, 8 * MiB), 0);
    assert_int_equal(ec_segment_reopen(c->dir, &seg), EC_ECORRUPT);
    close(fd);
    assert_int_equal(shm_unlink(name), 0);
}

/* The descriptor handed to clients is read-only, and so is their mapping. */
static void test_readonly_fd(void **state)
{
    ctx *c = *state;
    ec_segment seg, ro;
    int fd, flags;
    void *p;

    assert_int_equal(ec_segment_create(c->dir, SEG_SIZE, &seg), 0);
    assert_int_equal(ec_segment_open_readonly(&seg, &fd), 0);
    flags = fcntl(fd, F_GETFL);
    assert_int_equal(flags & O_ACCMODE, O_RDONLY);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    /* Cannot be mapped writable and shared. */
    p = mmap(NULL, SEG_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(p == MAP_FAILED);
    assert_int_equal(errno, EACCES);
    /* Cannot be resized. */
    assert_int_equal(ftruncate(fd, MiB), -1);

    assert_int_equal(ec_segment_map_fd(fd, &ro), 0);
    assert_false(ro.writable);
    assert_string_equal(ro.name, "");
    assert_true(ro.fd >= 0 && ro.fd != fd);
    assert_int_equal(ro.size, seg.size);
    assert_int_equal(ro.index_slots, seg.index_slots);
    assert_int_equal(ro.data_size, seg.data_size);
    assert_int_equal(ro.data - ro.base, seg.data - seg.base);
    assert_int_equal(ro.index_mask, seg.index_mask);
    /* The mapping cannot be made writable either. */
    assert_int_equal(mprotect(ro.base, EC_SHM_PAGE, PROT_READ | PROT_WRITE), -1);
    assert_int_equal(errno, EACCES);
    /* The caller keeps its fd; the segment keeps a dup. */
    close(fd);
    assert_int_equal(fcntl(ro.fd, F_GETFL) & O_ACCMODE, O_RDONLY);
    /* The daemon's writes are visible. */
    seg.data[777] = 0x42;
    assert_int_equal(ro.data[777], 0x42);
    /* A segment mapped from a descriptor has no name to hand out. */
    assert_int_equal(ec_segment_open_readonly(&ro, &fd), EC_EINVAL);
    assert_int_equal(ec_segment_destroy(&ro, c->dir), EC_EINVAL);
    ec_segment_close(&ro);

    /* After destroy there is nothing to open. */
    assert_int_equal(ec_segment_destroy(&seg, c->dir), 0);
    assert_int_equal(ec_segment_open_readonly(&seg, &fd), EC_ENOENT);
    ec_segment_close(&seg);
}

static void test_map_fd_bad(void **state)
{
    ec_segment seg;
    int pfd[2], mfd;
    (void)state;

    assert_int_equal(ec_segment_map_fd(-1, &seg), EC_EINVAL);
    assert_int_equal(ec_segment_map_fd(0, NULL), EC_EINVAL);
    assert_int_equal(pipe(pfd), 0);
    assert_int_equal(ec_segment_map_fd(pfd[0], &seg), EC_ECORRUPT);
    close(pfd[0]);
    close(pfd[1]);
    mfd = memfd_create("ec-test", MFD_CLOEXEC);
    assert_true(mfd >= 0);
    assert_int_equal(ec_segment_map_fd(mfd, &seg), EC_ECORRUPT); /* empty */
    assert_int_equal(ftruncate(mfd, 2 * MiB), 0);
    assert_int_equal(ec_segment_map_fd(mfd, &seg), EC_ECORRUPT); /* zeros */
    close(mfd);
}

/* Header validation against each corrupted field; never crashes. */
static void test_validate(void **state)
{
    const size_t size = 4 * MiB;
    uint8_t *mem = aligned_alloc(EC_SHM_PAGE, size);
    ec_shm_header *h = (ec_shm_header *)mem, good;
    ec_segment_geometry g;
    uint64_t slots, off, dsize;
    (void)state;

    assert_non_null(mem);
    memset(mem, 0, size);
    assert_int_equal(ec_segment_plan_geometry(size, 0, EC_ITEM_BYTES_DEFAULT, &g), 0);
    slots = g.index_slots;
    off = g.data_off;
    dsize = g.data_size;
    assert_true(g.item_buckets > 0);
    assert_int_equal(g.item_off, EC_SHM_HEADER_SIZE + slots * sizeof(ec_index_entry));
    h->item_off = g.item_off;
    h->item_buckets = g.item_buckets;
    h->magic = EC_SHM_MAGIC;
    h->layout_version = EC_SHM_LAYOUT_VERSION;
    h->header_size = EC_SHM_HEADER_SIZE;
    h->segment_size = size;
    h->index_off = EC_SHM_HEADER_SIZE;
    h->index_slots = slots;
    h->data_off = off;
    h->data_size = dsize;
    good = *h;
    assert_int_equal(ec_segment_validate(h, size), 0);
    assert_int_equal(ec_segment_validate(NULL, size), EC_EINVAL);
    assert_int_equal(ec_segment_validate(h, 100), EC_ECORRUPT);

#define BAD(field, value, what)                                                              \
    do {                                                                                     \
        *h = good;                                                                           \
        h->field = (value);                                                                  \
        assert_int_equal(ec_segment_validate(h, size), EC_ECORRUPT);                         \
        if (!strstr(ec_last_error(), what))                                                  \
            fail_msg("%s = %s: message '%s' lacks '%s'", #field, #value, ec_last_error(),     \
                     what);                                                                  \
    } while (0)

    BAD(magic, 0, "not an embcache segment");
    BAD(header_size, 8192, "header size");
    BAD(segment_size, size + 4096, "truncated");
    BAD(segment_size, size - 4096, "size mismatch");
    BAD(index_off, 8192, "index offset");
    BAD(index_slots, 0, "power of two");
    BAD(index_slots, 32, "power of two");
    BAD(index_slots, slots + 1, "power of two");
    BAD(index_slots, 1ull << 62, "exceeds");
    BAD(index_slots, 1ull << 63, "exceeds");
    BAD(index_slots, slots * 4, "item index is at");
    BAD(item_off, g.item_off + 64, "item index is at");
    BAD(item_buckets, g.item_buckets + (off - g.item_off) / 64, "past the data area");
    BAD(item_buckets, UINT64_MAX / 64, "runs past the segment end");
    BAD(item_buckets, UINT64_MAX, "runs past the segment end");
    BAD(data_off, off - 4096, "past the data area");
    BAD(data_off, off + 1, "aligned");
    BAD(data_size, dsize + 1, "aligned");
    BAD(data_size, dsize + 4096 * 1024, "past the segment end");
    BAD(data_size, UINT64_MAX - 4095, "past the segment end");
    BAD(data_off, UINT64_MAX - 4095, "past the segment end");
    BAD(data_off, size + 4096, "past the segment end");
#undef BAD
    /* An empty data area at the very end is consistent. */
    *h = good;
    h->data_size = 0;
    h->data_off = size;
    assert_int_equal(ec_segment_validate(h, size), 0);
    free(mem);
}

/* destroy removes only its own record. */
static void test_destroy_keeps_newer_record(void **state)
{
    ctx *c = *state;
    ec_segment a, b, r;

    assert_int_equal(ec_segment_create(c->dir, SEG_SIZE, &a), 0);
    assert_int_equal(ec_segment_create(c->dir, SEG_SIZE, &b), 0);
    assert_string_not_equal(a.name, b.name);
    assert_int_equal(ec_segment_destroy(&a, c->dir), 0);
    assert_false(shm_exists(a.name));
    assert_int_equal(ec_segment_reopen(c->dir, &r), 0);
    assert_string_equal(r.name, b.name);
    ec_segment_close(&r);
    assert_int_equal(ec_segment_destroy(&b, c->dir), 0);
    assert_int_equal(ec_segment_reopen(c->dir, &r), EC_ENOENT);
    ec_segment_close(&a);
    ec_segment_close(&b);
}

/* A segment larger than /dev/shm fails in posix_fallocate with EC_ENOSPC and
 * leaves neither the shm object nor a record. tmpfs refuses a request larger
 * than the whole file system at once, so this is cheap; anything else is
 * skipped. */
static void test_no_space(void **state)
{
    ctx *c = *state;
    struct statvfs vfs;
    ec_segment seg;
    uint64_t total, size;
    struct timespec t0, t1;
    char *rec = record_path(c);
    int rc;

    if (statvfs("/dev/shm", &vfs) != 0 || vfs.f_blocks == 0) {
        printf("skipped: /dev/shm has no size limit to exceed\n");
        free(rec);
        return;
    }
    total = (uint64_t)vfs.f_blocks * vfs.f_frsize;
    size = (total + 64 * MiB) / EC_SHM_PAGE * EC_SHM_PAGE;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    rc = ec_segment_create(c->dir, size, &seg);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("create of %llu bytes on a %llu-byte /dev/shm: %d in %.3f s\n",
           (unsigned long long)size, (unsigned long long)total, rc,
           (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    if (rc == 0) {
        /* Some file systems (or limits) allow it; nothing to test here. */
        ec_segment_destroy(&seg, c->dir);
        ec_segment_close(&seg);
        free(rec);
        return;
    }
    assert_int_equal(rc, EC_ENOSPC);
    assert_non_null(strstr(ec_last_error(), "/dev/shm"));
    assert_non_null(strstr(ec_last_error(), "--shm-size"));
    {
        char num[32];
        snprintf(num, sizeof(num), "%llu", (unsigned long long)size);
        assert_non_null(strstr(ec_last_error(), num));
    }
    assert_int_equal(access(rec, F_OK), -1);
    free(rec);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan),
        cmocka_unit_test_setup_teardown(test_create_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_invalid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_tables, setup, teardown),
        cmocka_unit_test_setup_teardown(test_umask_proof, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_bad_record, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_wrong_mode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_foreign, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_wrong_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readonly_fd, setup, teardown),
        cmocka_unit_test(test_map_fd_bad),
        cmocka_unit_test(test_validate),
        cmocka_unit_test_setup_teardown(test_destroy_keeps_newer_record, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_space, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
