/*
 * test_segment.c - unit tests of the shared segment (shm/segment.c): the
 * layout plan, create, seal and attach (a kept mapping taken over, and
 * every way it can be wrong: foreign magic, wrong layout version, a size
 * that does not match), the read-only descriptor and mapping handed to
 * clients, the refusal of an unsealed segment, header validation against
 * corrupted fields, and the removal of earlier versions' /dev/shm
 * segments. Single process; memfds, and named segments in /dev/shm only
 * for the legacy case.
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

static bool shm_exists(const char *name)
{
    int fd = shm_open(name, O_RDONLY, 0);
    if (fd < 0)
        return false;
    close(fd);
    return true;
}

static void *raw_map(int fd, size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(p != MAP_FAILED);
    return p;
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

/* Create, keep (a second writable mapping, as the keeper makes), seal;
 * the header and derived pointers; what the seal forbids and what it
 * keeps; and a kept mapping taken over by ec_segment_attach. */
static void test_create_seal_attach(void **state)
{
    ec_segment seg, again;
    struct stat st;
    uint64_t slots, off, dsize;
    uint8_t *kept;
    int kfd, seals;

    (void)state;
    assert_int_equal(ec_segment_create_geometry(SEG_SIZE, 0, EC_ITEM_BYTES_DEFAULT, &seg), 0);
    /* Nothing in /dev/shm, no record: an anonymous memfd. */
    assert_int_equal(fstat(seg.fd, &st), 0);
    assert_int_equal(st.st_size, SEG_SIZE);
    seals = fcntl(seg.fd, F_GET_SEALS);
    assert_true(seals >= 0 && !(seals & F_SEAL_FUTURE_WRITE));
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
    for (uint64_t i = 0; i < seg.index_slots; i++)
        assert_int_equal(atomic_load(&seg.index[i].key), 0);

    /* The keeper's mapping, made before the seal. */
    kfd = fcntl(seg.fd, F_DUPFD_CLOEXEC, 0);
    kept = raw_map(kfd, SEG_SIZE);
    assert_int_equal(ec_segment_seal(&seg), 0);
    assert_int_equal(ec_segment_seal(&seg), 0); /* twice is fine */
    seals = fcntl(seg.fd, F_GET_SEALS);
    assert_true((seals & (F_SEAL_FUTURE_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)) ==
                (F_SEAL_FUTURE_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL));
    /* Both existing mappings still write; nothing new can. */
    memcpy(seg.data + 12345, "warm restart", 12);
    assert_memory_equal(kept + off + 12345, "warm restart", 12);
    kept[off + 99] = 7;
    assert_int_equal(seg.data[99], 7);
    assert_true(mmap(NULL, SEG_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, seg.fd, 0) ==
                MAP_FAILED);
    assert_int_equal(errno, EPERM);
    assert_int_equal(pwrite(seg.fd, "x", 1, 0), -1);
    assert_int_equal(ftruncate(seg.fd, SEG_SIZE / 2), -1);
    assert_int_equal(ftruncate(seg.fd, SEG_SIZE * 2), -1);
    assert_int_equal(fallocate(seg.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, SEG_SIZE),
                     -1);
    assert_int_equal(fcntl(seg.fd, F_ADD_SEALS, 0), -1); /* F_SEAL_SEAL */

    /* The worker dies (its mapping goes); the next one takes over the
     * keeper's. */
    atomic_store(&seg.hdr->generation, 7);
    ec_segment_close(&seg);
    assert_int_equal(seg.fd, -1);
    assert_null(seg.base);
    ec_segment_close(&seg); /* twice is harmless */
    assert_int_equal(ec_segment_attach(kfd, kept, SEG_SIZE, &again), 0);
    assert_true(again.writable);
    assert_int_equal(again.size, SEG_SIZE);
    assert_memory_equal(again.data + 12345, "warm restart", 12);
    assert_int_equal(atomic_load(&again.hdr->generation), 7); /* not bumped */
    assert_int_equal(again.index_slots, slots);
    ec_segment_close(&again);
}

/* attach refuses a kept segment that is not what it says, and seals one a
 * worker died before sealing. */
static void test_attach_bad(void **state)
{
    ec_segment seg, again;
    uint8_t *kept;
    int kfd;

    (void)state;
    assert_int_equal(ec_segment_attach(-1, NULL, 0, &again), EC_EINVAL);
    assert_int_equal(ec_segment_create_geometry(SEG_SIZE, 0, 0, &seg), 0);
    kfd = fcntl(seg.fd, F_DUPFD_CLOEXEC, 0);
    kept = raw_map(kfd, SEG_SIZE);
    ec_segment_close(&seg); /* died before sealing */
    /* a size that is not the file's */
    assert_int_equal(ec_segment_attach(kfd, kept, SEG_SIZE - EC_SHM_PAGE, &again), EC_ECORRUPT);
    /* foreign magic, another layout */
    ((ec_shm_header *)kept)->magic ^= 1;
    assert_int_equal(ec_segment_attach(kfd, kept, SEG_SIZE, &again), EC_ECORRUPT);
    assert_non_null(strstr(ec_last_error(), "not an embcache segment"));
    ((ec_shm_header *)kept)->magic ^= 1;
    ((ec_shm_header *)kept)->layout_version++;
    assert_int_equal(ec_segment_attach(kfd, kept, SEG_SIZE, &again), EC_EVERSION);
    ((ec_shm_header *)kept)->layout_version--;
    /* valid: taken over, and sealed now */
    assert_int_equal(ec_segment_attach(kfd, kept, SEG_SIZE, &again), 0);
    assert_true(fcntl(kfd, F_GET_SEALS) & F_SEAL_FUTURE_WRITE);
    ec_segment_close(&again);
}

/* Device tables: laid out after the host index, validated, and usable
 * through a device view whose bounds are the slab's, not the data area's. */
static void test_device_tables(void **state)
{
    ec_segment seg, dv, ro;
    uint64_t slots, off, dsize, slots2, off2, dsize2;
    ec_index_ref ref;
    int rofd;

    (void)state;
    assert_int_equal(ec_segment_plan(SEG_SIZE, &slots, &off, &dsize), 0);
    assert_int_equal(ec_segment_plan_ex(SEG_SIZE, 2, &slots2, &off2, &dsize2), 0);
    assert_true(off2 >= EC_SHM_HEADER_SIZE + 3 * slots2 * sizeof(ec_index_entry));
    assert_true(dsize2 <= dsize);
    assert_int_equal(ec_segment_plan_ex(SEG_SIZE, EC_SHM_MAX_DEVICES + 1, &slots2, &off2,
                                        &dsize2), EC_EINVAL);

    assert_int_equal(ec_segment_create_ex(SEG_SIZE, 2, &seg), 0);
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
    ec_segment_close(&seg);
}

static void test_create_invalid(void **state)
{
    ec_segment seg;

    (void)state;
    assert_int_equal(ec_segment_create(12345, &seg), EC_EINVAL);
    assert_int_equal(ec_segment_create(64 * 1024, &seg), EC_EINVAL);
    assert_int_equal(ec_segment_create(SEG_SIZE, NULL), EC_EINVAL);
    assert_int_equal(ec_segment_seal(NULL), EC_EINVAL);
}

/* The descriptor handed to clients is read-only, and so is their mapping. */
static void test_readonly_fd(void **state)
{
    ec_segment seg, ro;
    int fd, flags;
    void *p;

    (void)state;
    assert_int_equal(ec_segment_create(SEG_SIZE, &seg), 0);
    assert_int_equal(ec_segment_open_readonly(&seg, &fd), 0);
    flags = fcntl(fd, F_GETFL);
    assert_int_equal(flags & O_ACCMODE, O_RDONLY);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    /* Cannot be mapped writable and shared. */
    p = mmap(NULL, SEG_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(p == MAP_FAILED);
    /* Cannot be resized. */
    assert_int_equal(ftruncate(fd, MiB), -1);

    assert_int_equal(ec_segment_map_fd(fd, &ro), 0);
    assert_false(ro.writable);
    assert_true(ro.fd >= 0 && ro.fd != fd);
    assert_int_equal(ro.size, seg.size);
    assert_int_equal(ro.index_slots, seg.index_slots);
    assert_int_equal(ro.data_size, seg.data_size);
    assert_int_equal(ro.data - ro.base, seg.data - seg.base);
    assert_int_equal(ro.index_mask, seg.index_mask);
    /* The mapping cannot be made writable either. */
    assert_int_equal(mprotect(ro.base, EC_SHM_PAGE, PROT_READ | PROT_WRITE), -1);
    /* The caller keeps its fd; the segment keeps a dup. */
    close(fd);
    assert_int_equal(fcntl(ro.fd, F_GETFL) & O_ACCMODE, O_RDONLY);
    /* The daemon's writes are visible. */
    seg.data[777] = 0x42;
    assert_int_equal(ro.data[777], 0x42);
    ec_segment_close(&ro);
    ec_segment_close(&seg);
    assert_int_equal(ec_segment_open_readonly(&seg, &fd), EC_EINVAL);
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
    mfd = memfd_create("ec-test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    assert_true(mfd >= 0);
    assert_int_equal(ec_segment_map_fd(mfd, &seg), EC_EPERM); /* not sealed */
    assert_int_equal(ftruncate(mfd, 2 * MiB), 0);
    assert_int_equal(fcntl(mfd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE | F_SEAL_SHRINK | F_SEAL_GROW),
                     0);
    assert_int_equal(ec_segment_map_fd(mfd, &seg), EC_ECORRUPT); /* sealed zeros */
    close(mfd);
}

/* A client refuses a segment that anyone could still write: one that is not
 * sealed, however valid its header (an older daemon's, or a fake). */
static void test_map_fd_unsealed(void **state)
{
    ec_segment seg, ro;
    int fd;

    (void)state;
    assert_int_equal(ec_segment_create_geometry(SEG_SIZE, 0, 0, &seg), 0);
    fd = fcntl(seg.fd, F_DUPFD_CLOEXEC, 0);
    assert_int_equal(ec_segment_map_fd(fd, &ro), EC_EPERM);
    assert_non_null(strstr(ec_last_error(), "not sealed"));
    assert_int_equal(ec_segment_seal(&seg), 0);
    assert_int_equal(ec_segment_map_fd(fd, &ro), 0);
    ec_segment_close(&ro);
    close(fd);
    ec_segment_close(&seg);
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

/* An earlier version's named segment and its record are removed, but only
 * a segment of ours: the record may have been written by someone else. */
static void test_remove_legacy(void **state)
{
    ctx *c = *state;
    char name[64] = "/embcache-0123456789abcdef0123456789abcdef", rec[600], line[80];
    int fd;

    snprintf(rec, sizeof(rec), "%s/%s", c->dir, EC_SEGMENT_RECORD);
    assert_int_equal(ec_segment_remove_legacy(c->dir), 0); /* none: fine */
    fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    assert_true(fd >= 0);
    close(fd);
    snprintf(line, sizeof(line), "%s\n", name);
    assert_int_equal(ect_write_file(rec, line, strlen(line)), 0);
    assert_int_equal(ec_segment_remove_legacy(c->dir), 0);
    assert_false(shm_exists(name));
    assert_int_equal(access(rec, F_OK), -1);

    /* Someone else's segment stays; the record goes. */
    if (geteuid() == 0) {
        fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
        assert_true(fd >= 0);
        assert_int_equal(fchown(fd, 65534, 65534), 0);
        close(fd);
        assert_int_equal(ect_write_file(rec, line, strlen(line)), 0);
        assert_int_equal(ec_segment_remove_legacy(c->dir), 0);
        assert_true(shm_exists(name));
        assert_int_equal(access(rec, F_OK), -1);
        shm_unlink(name);
    }
    /* A garbage record is removed without touching anything. */
    assert_int_equal(ect_write_file(rec, "/etc/passwd\n", 12), 0);
    assert_int_equal(ec_segment_remove_legacy(c->dir), 0);
    assert_int_equal(access(rec, F_OK), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan),
        cmocka_unit_test(test_create_seal_attach),
        cmocka_unit_test(test_attach_bad),
        cmocka_unit_test(test_create_invalid),
        cmocka_unit_test(test_device_tables),
        cmocka_unit_test(test_readonly_fd),
        cmocka_unit_test(test_map_fd_bad),
        cmocka_unit_test(test_map_fd_unsealed),
        cmocka_unit_test(test_validate),
        cmocka_unit_test_setup_teardown(test_remove_legacy, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
