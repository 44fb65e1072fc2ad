/*
 * partfile_origin.c - the origin record of a partition file (layout in
 * partfile.h): which model, version and tensor the file was imported as,
 * with the version's training round, params and created time, so that
 * `embcache recover` can rebuild a catalog from the files alone.
 *
 * Pure byte work, no I/O and no state: partfile.c calls the encoder when
 * the writer commits (the daemon's importer thread, or a tool upgrading
 * files) and the decoder when a reader asks for the record
 * (ec_partfile_read_origin: core/recover.c, tests). The record's bytes are
 * covered by the header checksum like the rest of the page; the decoder
 * still checks every field, since a valid checksum proves only that the
 * page is the one the writer wrote, and a writer can be wrong or hostile.
 */
#include "core/partfile.h"

#include <string.h>

#include "common/err.h"

#define REC_LEN ((size_t)EC_PARTFILE_ALIGN - EC_PARTFILE_ORIGIN_OFF)

static void put_u16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint16_t get_u16(const unsigned char *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* A name field of the record: 1..EC_NAME_MAX bytes, NUL-terminated within
 * its buffer. Returns its length, or 0 when it is not acceptable. */
static size_t name_len(const char *s, size_t cap)
{
    size_t n = strnlen(s, cap);
    return n >= 1 && n <= EC_NAME_MAX && n < cap ? n : 0;
}

int ec_partfile_origin_encode(const ec_partfile_origin *o, const char *params_json,
                              unsigned char *rec, size_t len, bool *params_lost_out)
{
    size_t ml, tl, pl, full, room;
    uint32_t flags = 0;

    if (!o || !rec || len != REC_LEN)
        return ec_seterr(EC_EINVAL, "partition file origin: NULL argument or a record "
                                    "buffer of %zu bytes (%zu needed)", len, REC_LEN);
    ml = name_len(o->model, sizeof(o->model));
    tl = name_len(o->tensor, sizeof(o->tensor));
    if (!ml || !tl)
        return ec_seterr(EC_EINVAL, "partition file origin: the %s name is empty or longer "
                                    "than %d bytes", !ml ? "model" : "tensor", EC_NAME_MAX);
    if (o->version < 1 || o->round < -1 || o->version_tensors == 0)
        return ec_seterr(EC_EINVAL, "partition file origin of %s/%s: version %lld, round "
                         "%lld, %u tensors (versions >= 1, rounds >= -1, tensors >= 1)",
                         o->model, o->tensor, (long long)o->version, (long long)o->round,
                         o->version_tensors);
    full = params_json ? strlen(params_json) : 0;
    if (full > UINT32_MAX)
        return ec_seterr(EC_EINVAL, "partition file origin: params of %zu bytes", full);
    room = EC_PARTFILE_ORIGIN_ROOM - ml - tl;
    pl = full;
    if (pl > room) {
        pl = 0; /* never cut: a cut JSON would be wrong data */
        flags |= EC_PARTFILE_ORIGIN_PARAMS_LOST;
    }

    memset(rec, 0, len);
    put_u64(rec, EC_PARTFILE_ORIGIN_MAGIC);
    put_u32(rec + 8, (uint32_t)(EC_PARTFILE_ORIGIN_FIXED + ml + tl + pl));
    put_u32(rec + 12, flags);
    put_u64(rec + 16, (uint64_t)o->version);
    put_u64(rec + 24, (uint64_t)o->round);
    put_u64(rec + 32, (uint64_t)o->created_unix);
    put_u32(rec + 40, o->version_tensors);
    put_u16(rec + 44, (uint16_t)ml);
    put_u16(rec + 46, (uint16_t)tl);
    put_u32(rec + 48, (uint32_t)pl);
    put_u32(rec + 52, (uint32_t)full);
    memcpy(rec + EC_PARTFILE_ORIGIN_FIXED, o->model, ml);
    memcpy(rec + EC_PARTFILE_ORIGIN_FIXED + ml, o->tensor, tl);
    if (pl)
        memcpy(rec + EC_PARTFILE_ORIGIN_FIXED + ml + tl, params_json, pl);
    if (params_lost_out)
        *params_lost_out = flags & EC_PARTFILE_ORIGIN_PARAMS_LOST;
    return 0;
}

#define BAD(...) ec_seterr(EC_ECORRUPT, "origin record: " __VA_ARGS__)

int ec_partfile_origin_decode(const unsigned char *rec, size_t len, ec_partfile_origin *out)
{
    ec_partfile_origin o;
    uint32_t total, flags, pl, full;
    uint16_t ml, tl;
    const unsigned char *s;
    size_t i;

    if (!rec || !out || len != REC_LEN)
        return ec_seterr(EC_EINVAL, "partition file origin: NULL argument or a record "
                                    "buffer of %zu bytes (%zu needed)", len, REC_LEN);
    memset(&o, 0, sizeof(o));
    for (i = 0; i < len && rec[i] == 0; i++)
        ;
    if (i == len) { /* written before origins existed */
        *out = o;
        return 0;
    }
    if (get_u64(rec) != EC_PARTFILE_ORIGIN_MAGIC)
        return BAD("bad magic at header byte %u", EC_PARTFILE_ORIGIN_OFF);
    total = get_u32(rec + 8);
    flags = get_u32(rec + 12);
    o.version = (int64_t)get_u64(rec + 16);
    o.round = (int64_t)get_u64(rec + 24);
    o.created_unix = (int64_t)get_u64(rec + 32);
    o.version_tensors = get_u32(rec + 40);
    ml = get_u16(rec + 44);
    tl = get_u16(rec + 46);
    pl = get_u32(rec + 48);
    full = get_u32(rec + 52);
    if (flags & ~(uint32_t)EC_PARTFILE_ORIGIN_PARAMS_LOST)
        return BAD("unknown flags 0x%x", flags);
    if (ml < 1 || ml > EC_NAME_MAX || tl < 1 || tl > EC_NAME_MAX)
        return BAD("name lengths %u and %u (1..%d)", ml, tl, EC_NAME_MAX);
    if (pl > EC_PARTFILE_ORIGIN_ROOM - ml - tl)
        return BAD("params of %u bytes do not fit the page", pl);
    if (total != EC_PARTFILE_ORIGIN_FIXED + ml + tl + pl)
        return BAD("length %u, its fields make %u", total,
                   (unsigned)(EC_PARTFILE_ORIGIN_FIXED + ml + tl + pl));
    if ((flags & EC_PARTFILE_ORIGIN_PARAMS_LOST) ? pl != 0 || full == 0 : pl != full)
        return BAD("params of %u bytes stored, %u in the version, flags 0x%x", pl, full,
                   flags);
    if (o.version < 1 || o.round < -1 || o.version_tensors == 0)
        return BAD("version %lld, round %lld, %u tensors (versions >= 1, rounds >= -1, "
                   "tensors >= 1)", (long long)o.version, (long long)o.round,
                   o.version_tensors);
    s = rec + EC_PARTFILE_ORIGIN_FIXED;
    if (memchr(s, 0, (size_t)ml + tl + pl))
        return BAD("a NUL byte inside a name or the params");
    for (i = total; i < len; i++)
        if (rec[i] != 0)
            return BAD("byte %zu after the record is not zero", EC_PARTFILE_ORIGIN_OFF + i);
    memcpy(o.model, s, ml);
    memcpy(o.tensor, s + ml, tl);
    memcpy(o.params_json, s + ml + tl, pl);
    o.params_full_len = full;
    o.params_lost = flags & EC_PARTFILE_ORIGIN_PARAMS_LOST;
    o.present = true;
    *out = o;
    return 0;
}
