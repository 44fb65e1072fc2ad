/*
 * fuzz_proto.c - fuzz target for the control-protocol reader (ec_msg_parse
 * and the ec_get_* field readers in core/proto.c), which the daemon runs on
 * every message from a client and libembcache on every reply.
 *
 * An input is one message as it would arrive on the socket. After
 * ec_msg_parse accepts its header, the body is read twice: first as the
 * daemon and the client read it, by op (request or reply, error replies as
 * one string), then by a sequence of getters chosen by the header's req_id
 * and status bytes, so the fuzzer steers reads of every width at every
 * offset. Every read is checked against the bytes themselves: a get that
 * fits returns those bytes and advances by their size, one that does not
 * marks the buffer bad, returns zero and does not advance, pos never passes
 * len, and strings come back NUL-terminated within their buffer (allocated
 * to exactly the size passed, so AddressSanitizer sees any overrun). Built
 * with driver.c (ctest smoke run) or with libFuzzer (EMBCACHE_FUZZ=ON).
 */
#include <string.h>

#include "common/dtype.h"
#include "common/err.h"
#include "core/proto.h"
#include "fuzz.h"

/* A body being read, with what it must keep pointing at. */
struct reader {
    ec_rbuf r;
    const uint8_t *body;
    size_t len;
};

enum getter {
    G_U8, G_U16, G_U32, G_U64, G_I64, G_STR_SMALL, G_STR_NAME, G_TENSOR, G_BYTES, G_NS,
    G_COUNT_
};

static void check_rbuf(const struct reader *d)
{
    FUZZ_CHECK(d->r.p == d->body && d->r.len == d->len);
    FUZZ_CHECK(d->r.pos <= d->r.len);
    FUZZ_CHECK(ec_rbuf_done(&d->r) == (!d->r.bad && d->r.pos == d->r.len));
}

/* One integer of `width` bytes (signed for G_I64), checked against the bytes. */
static uint64_t get_int(struct reader *d, enum getter g)
{
    static const unsigned widths[] = {[G_U8] = 1, [G_U16] = 2, [G_U32] = 4, [G_U64] = 8,
                                      [G_I64] = 8};
    unsigned width = widths[g];
    size_t pos = d->r.pos;
    bool fits = !d->r.bad && width <= d->r.len - pos;
    uint64_t v = 0, want = 0;

    if (fits)
        for (unsigned i = 0; i < width; i++)
            want |= (uint64_t)d->body[pos + i] << (8 * i);
    switch (g) {
    case G_U8: v = ec_get_u8(&d->r); break;
    case G_U16: v = ec_get_u16(&d->r); break;
    case G_U32: v = ec_get_u32(&d->r); break;
    case G_U64: v = ec_get_u64(&d->r); break;
    default: v = (uint64_t)ec_get_i64(&d->r); break;
    }
    if (fits)
        FUZZ_CHECK(!d->r.bad && d->r.pos == pos + width && v == want);
    else
        FUZZ_CHECK(d->r.bad && d->r.pos == pos && v == 0);
    check_rbuf(d);
    return v;
}

static uint32_t get_u32(struct reader *d) { return (uint32_t)get_int(d, G_U32); }

/* A string into a heap buffer of exactly cap bytes. */
static void get_str(struct reader *d, size_t cap)
{
    char *dst = malloc(cap);
    size_t pos = d->r.pos, n;
    bool was_bad = d->r.bad;

    FUZZ_CHECK(dst != NULL);
    memset(dst, 'x', cap);
    ec_get_str(&d->r, dst, cap);
    n = strnlen(dst, cap);
    FUZZ_CHECK(n < cap);
    if (was_bad) {
        FUZZ_CHECK(d->r.bad && d->r.pos == pos && n == 0);
    } else if (!d->r.bad) {
        /* u16 length, then exactly those bytes, none of them NUL. */
        FUZZ_CHECK(d->r.pos == pos + 2 + n);
        FUZZ_CHECK((size_t)(d->body[pos] | d->body[pos + 1] << 8) == n);
        FUZZ_CHECK(memcmp(dst, d->body + pos + 2, n) == 0);
    } else {
        FUZZ_CHECK(n == 0 && (d->r.pos == pos || d->r.pos == pos + 2));
    }
    check_rbuf(d);
    free(dst);
}

static void get_tensor(struct reader *d)
{
    ec_proto_tensor t;
    bool was_bad = d->r.bad;
    size_t pos = d->r.pos;
    int rc;

    memset(&t, 0xa5, sizeof(t));
    rc = ec_get_tensor(&d->r, &t);
    FUZZ_CHECK(strnlen(t.model, sizeof(t.model)) <= EC_NAME_MAX);
    FUZZ_CHECK(strnlen(t.name, sizeof(t.name)) <= EC_NAME_MAX);
    if (rc == 0) {
        FUZZ_CHECK(!was_bad && !d->r.bad && d->r.pos > pos);
        FUZZ_CHECK(t.id != 0 && ec_dtype_valid(t.dtype) && t.ndim <= EC_MAX_DIMS);
        FUZZ_CHECK(t.rows_per_partition != 0);
        FUZZ_CHECK(t.rows == (t.ndim ? t.shape[0] : 1));
        /* "Consistent with shape and dtype" in exact arithmetic: a row's
         * bytes, as the shape says, must not wrap around 64 bits. */
        {
            uint64_t row_bytes = ec_dtype_size((ec_dtype)t.dtype);
            bool zero = false;
            for (uint32_t i = 1; i < t.ndim; i++)
                zero |= t.shape[i] == 0;
            /* The exact product: 0 when a dimension is 0, whatever the others. */
            for (uint32_t i = 1; i < t.ndim && !zero; i++)
                FUZZ_CHECK(!__builtin_mul_overflow(row_bytes, t.shape[i], &row_bytes));
            FUZZ_CHECK((zero ? 0 : row_bytes) == t.row_bytes);
        }
    } else {
        FUZZ_CHECK(rc == EC_EPROTO);
    }
    if (was_bad)
        FUZZ_CHECK(d->r.pos == pos && rc != 0);
    check_rbuf(d);
}

/* "bytes": a u32 length and the bytes, pointing into the body. */
static void get_bytes(struct reader *d, uint32_t max)
{
    size_t pos = d->r.pos;
    bool was_bad = d->r.bad;
    const uint8_t *p = (const uint8_t *)1;
    uint32_t n = ec_get_bytes(&d->r, &p, max);

    if (!d->r.bad) {
        FUZZ_CHECK(!was_bad && n <= max && d->r.pos == pos + 4 + n);
        FUZZ_CHECK(n ? p == d->body + pos + 4 : p == NULL);
    } else {
        FUZZ_CHECK(n == 0 && p == NULL);
    }
    check_rbuf(d);
}

/* A namespace record (NS_LIST's reply), as libembcache reads it. */
static void get_ns(struct reader *d)
{
    ec_proto_ns ns;
    bool was_bad = d->r.bad;
    int rc;

    memset(&ns, 0xa5, sizeof(ns));
    rc = ec_get_ns(&d->r, &ns);
    FUZZ_CHECK(strnlen(ns.name, sizeof(ns.name)) <= EC_NS_NAME_MAX);
    FUZZ_CHECK(strnlen(ns.bind_model, sizeof(ns.bind_model)) <= EC_NAME_MAX);
    FUZZ_CHECK(strnlen(ns.bind_version, sizeof(ns.bind_version)) <= EC_NAME_MAX);
    if (rc == 0) {
        FUZZ_CHECK(!was_bad && !d->r.bad);
        FUZZ_CHECK(ec_ns_name_ok(ns.name) &&
                   (ns.flags & ~(uint32_t)(EC_NS_SHARED | EC_NS_REMOTE)) == 0);
    } else {
        FUZZ_CHECK(rc == EC_EPROTO);
    }
    check_rbuf(d);
}

static void run_getter(struct reader *d, enum getter g)
{
    switch (g) {
    case G_BYTES: get_bytes(d, EC_RES_KEY_MAX); break;
    case G_NS: get_ns(d); break;
    case G_STR_SMALL: get_str(d, 1 + (d->r.pos & 15)); break;
    case G_STR_NAME: get_str(d, EC_NAME_MAX + 1); break;
    case G_TENSOR: get_tensor(d); break;
    default: get_int(d, g); break;
    }
}

/* Read a body the way the daemon (requests) and libembcache (replies) do.
 * Counted lists stop at the first bad read: each element consumes at least
 * one byte, so the loops end within the body. */
static void read_by_op(struct reader *d, const ec_msg_hdr *h)
{
    bool reply = (h->op & EC_OP_REPLY) != 0;
    uint32_t n;

    if (reply && h->status < 0) {
        get_str(d, EC_ERRMSG_MAX);
        return;
    }
    switch (h->op & ~EC_OP_REPLY) {
    case EC_OP_HELLO:
        if (!reply) {
            get_u32(d);
            get_str(d, EC_NAME_MAX + 1);
            break;
        }
        get_int(d, G_U64);
        get_int(d, G_U64);
        get_u32(d);
        get_u32(d);
        get_u32(d);
        get_int(d, G_U64);
        get_str(d, 64);
        break;
    case EC_OP_RESOLVE:
        if (reply) {
            get_tensor(d);
            break;
        }
        for (int i = 0; i < 3; i++)
            get_str(d, EC_NAME_MAX + 1);
        break;
    case EC_OP_FAULT:
        if (reply)
            break;
        get_u32(d);
        n = get_u32(d);
        for (uint32_t i = 0; i < n && i < EC_FAULT_MAX_PARTS && !d->r.bad; i++)
            get_u32(d);
        break;
    case EC_OP_PIN:
        if (!reply) {
            get_u32(d);
            break;
        }
        for (int i = 0; i < 3; i++)
            get_int(d, G_U64);
        break;
    case EC_OP_UNPIN:
        if (!reply)
            get_int(d, G_U64);
        break;
    case EC_OP_STATS:
        if (!reply)
            break;
        n = get_u32(d);
        for (uint32_t i = 0; i < n && !d->r.bad; i++) {
            get_str(d, EC_NAME_MAX + 1);
            get_int(d, G_U64);
        }
        break;
    case EC_OP_LIST:
        if (!reply) {
            get_str(d, EC_NAME_MAX + 1);
            get_u32(d);
            get_u32(d);
            break;
        }
        get_u32(d);
        get_u32(d);
        n = get_u32(d);
        for (uint32_t i = 0; i < n && !d->r.bad; i++) {
            uint64_t kind = get_int(d, G_U8);
            if (kind == EC_LIST_VERSION) {
                get_str(d, EC_NAME_MAX + 1);
                get_int(d, G_I64);
                get_int(d, G_I64);
                get_str(d, EC_PARAMS_MAX + 1);
                get_str(d, 4096);
                get_int(d, G_I64);
                get_u32(d);
                get_int(d, G_U64);
            } else if (kind == EC_LIST_TENSOR) {
                uint32_t ndim;
                get_str(d, EC_NAME_MAX + 1);
                get_u32(d);
                ndim = get_u32(d);
                if (ndim > EC_MAX_DIMS)
                    break;
                for (uint32_t k = 0; k < ndim; k++)
                    get_int(d, G_U64);
                get_int(d, G_U64);
                get_int(d, G_U64);
            } else {
                break;
            }
        }
        break;
    case EC_OP_ALIAS:
        if (reply)
            break;
        get_str(d, EC_NAME_MAX + 1);
        get_str(d, EC_NAME_MAX + 1);
        get_int(d, G_I64);
        break;
    case EC_OP_FIND:
        if (reply) {
            get_int(d, G_I64);
            break;
        }
        get_str(d, EC_NAME_MAX + 1);
        get_int(d, G_I64);
        get_str(d, EC_PARAMS_MAX + 1);
        break;
    case EC_OP_IMPORT:
        if (reply) {
            get_u32(d);
            break;
        }
        get_str(d, EC_NAME_MAX + 1);
        get_int(d, G_I64);
        get_int(d, G_I64);
        get_str(d, EC_PARAMS_MAX + 1);
        get_int(d, G_U64);
        n = get_u32(d);
        for (uint32_t i = 0; i < n && i < EC_MSG_MAX_FDS && !d->r.bad; i++)
            get_str(d, EC_NAME_MAX + 1);
        break;
    case EC_OP_NS_OPEN:
        if (reply) {
            get_u32(d);
            get_int(d, G_U64);
            get_u32(d);
            get_u32(d);
            break;
        }
        get_str(d, EC_NS_NAME_MAX + 2);
        get_u32(d);
        get_str(d, EC_NAME_MAX + 1);
        get_str(d, EC_NAME_MAX + 1);
        {
            ec_proto_ns_opts o;
            ec_get_ns_opts(&d->r, &o);
            check_rbuf(d);
        }
        break;
    case EC_OP_RES_LEASE:
        if (reply) {
            get_u32(d);
            break;
        }
        get_u32(d);
        get_u32(d);
        get_bytes(d, EC_RES_KEY_MAX);
        get_int(d, G_I64);
        break;
    case EC_OP_RES_PUT:
        if (reply)
            break;
        get_u32(d);
        get_u32(d);
        get_int(d, G_U64);
        get_u32(d);
        get_u32(d);
        n = get_u32(d);
        for (uint32_t i = 0; i < n && i < EC_MAX_DIMS && !d->r.bad; i++)
            get_int(d, G_U64);
        get_bytes(d, EC_RES_KEY_MAX);
        get_int(d, G_U64);
        get_u32(d);
        break;
    case EC_OP_RES_RELEASE:
    case EC_OP_RES_PURGE:
        if (reply) {
            if ((h->op & ~EC_OP_REPLY) == EC_OP_RES_PURGE)
                get_int(d, G_U64);
            break;
        }
        get_u32(d);
        if ((h->op & ~EC_OP_REPLY) == EC_OP_RES_PURGE)
            get_u32(d);
        get_bytes(d, EC_RES_KEY_MAX);
        break;
    case EC_OP_NS_LIST:
        if (!reply) {
            get_u32(d);
            break;
        }
        get_u32(d);
        n = get_u32(d);
        for (uint32_t i = 0; i < n && i < EC_NS_MAX && !d->r.bad; i++)
            get_ns(d);
        break;
    case EC_OP_NS_DROP:
        if (!reply)
            get_str(d, EC_NS_NAME_MAX + 2);
        break;
    default:
        break;
    }
}

/* Read the body with getters picked by the nibbles of sel[0..8) (the
 * header's req_id and status), cycling, until it is bad or used up; then
 * one more of each getter, which must not move past the end. */
static void read_by_selectors(struct reader *d, const uint8_t *sel)
{
    size_t steps = 0;

    while (!d->r.bad && d->r.pos < d->r.len && steps <= d->len) {
        uint8_t b = sel[(steps / 2) % 8];
        run_getter(d, (enum getter)((steps % 2 ? b >> 4 : b & 15) % G_COUNT_));
        steps++;
    }
    for (int g = 0; g < G_COUNT_; g++)
        run_getter(d, (enum getter)g);
    FUZZ_CHECK(!ec_rbuf_done(&d->r));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ec_msg_hdr h;
    ec_rbuf body;
    struct reader d;
    int rc;

    memset(&body, 0, sizeof(body));
    rc = ec_msg_parse(data, size, &h, &body);
    if (rc < 0) {
        FUZZ_CHECK(rc == EC_EPROTO || rc == EC_EVERSION);
        return 0;
    }
    FUZZ_CHECK(rc == 0 && size >= EC_MSG_HDR);
    FUZZ_CHECK(h.magic == EC_PROTO_MAGIC && h.version == EC_PROTO_VERSION);
    FUZZ_CHECK(h.body_len == size - EC_MSG_HDR && h.reserved == 0);
    FUZZ_CHECK(body.p == data + EC_MSG_HDR && body.len == size - EC_MSG_HDR);
    FUZZ_CHECK(body.pos == 0 && !body.bad);

    d.r = body;
    d.body = body.p;
    d.len = body.len;
    read_by_op(&d, &h);

    d.r = body;
    read_by_selectors(&d, data + offsetof(ec_msg_hdr, req_id));
    return 0;
}
