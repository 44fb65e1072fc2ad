/*
 * client_context.c - context windows over cached results
 * (include/embcache_results.h, "Context windows"): a token sequence as a
 * chain of blocks, block i keyed by (the chain hash of blocks 0..i-1, the
 * tokens of block i); the longest cached prefix in one call; blocks stored
 * and gathered to host or GPU memory.
 *
 * Runs in inference processes, on any thread; lookups take no lock.
 */
#include "client/client_impl.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

#define CHAIN_BYTES 16u

/* Block i's key: parent chain hash then its tokens (little-endian int32).
 * key must hold CHAIN_BYTES + 4 * block_tokens bytes. */
static size_t block_key(const ec_results *r, const uint8_t parent[CHAIN_BYTES],
                        const int32_t *tokens, size_t block_tokens, uint8_t *key)
{
    memcpy(key, parent, CHAIN_BYTES);
    memcpy(key + CHAIN_BYTES, tokens, block_tokens * sizeof(int32_t));
    (void)r;
    return CHAIN_BYTES + block_tokens * sizeof(int32_t);
}

/* The chain hash of a block from its key, seeded with the namespace's salt. */
static void chain_next(const ec_results *r, const uint8_t *key, size_t len,
                       uint8_t parent[CHAIN_BYTES])
{
    XXH128_hash_t h = XXH3_128bits_withSeed(key, len, r->salt);
    XXH128_canonical_t c;

    XXH128_canonicalFromHash(&c, h);
    memcpy(parent, c.digest, CHAIN_BYTES);
}

static int args_ok(const ec_results *r, const int32_t *tokens, size_t n, size_t block_tokens)
{
    if (!r || (!tokens && n))
        return ec_seterr(EC_EINVAL, "context: no namespace handle or no tokens");
    if (block_tokens == 0 || CHAIN_BYTES + block_tokens * sizeof(int32_t) > EC_RES_KEY_MAX)
        return ec_seterr(EC_EINVAL, "context: blocks of %zu tokens (1 to %u)", block_tokens,
                         (unsigned)((EC_RES_KEY_MAX - CHAIN_BYTES) / sizeof(int32_t)));
    return 0;
}

int ec_context_lookup_prefix(ec_results *r, const int32_t *tokens, size_t n,
                             size_t block_tokens, size_t *blocks)
{
    uint8_t parent[CHAIN_BYTES] = {0}, key[EC_RES_KEY_MAX];
    size_t i;
    int rc;

    if ((rc = args_ok(r, tokens, n, block_tokens)))
        return rc;
    if (!blocks)
        return ec_seterr(EC_EINVAL, "context: no output for the block count");
    for (i = 0; i < n / block_tokens; i++) {
        size_t len = block_key(r, parent, tokens + i * block_tokens, block_tokens, key);
        rc = ec_results_get(r, key, len, EC_RES_ALLOW_STALE, NULL, 0, NULL);
        if (rc < 0)
            return rc;
        if (rc == 0)
            break;
        chain_next(r, key, len, parent);
    }
    *blocks = i;
    return 0;
}

int ec_context_put(ec_results *r, const int32_t *tokens, size_t n, size_t block_tokens,
                   size_t first, size_t count, const ec_result_value *values)
{
    uint8_t parent[CHAIN_BYTES] = {0}, key[EC_RES_KEY_MAX];
    int rc;

    if ((rc = args_ok(r, tokens, n, block_tokens)))
        return rc;
    if (first + count < first || first + count > n / block_tokens || (count && !values))
        return ec_seterr(EC_EINVAL, "context: blocks %zu..%zu of a sequence of %zu whole "
                                    "blocks",
                         first, first + count, n / block_tokens);
    for (size_t i = 0; i < first + count; i++) {
        size_t len = block_key(r, parent, tokens + i * block_tokens, block_tokens, key);
        if (i >= first && (rc = ec_results_put(r, key, len, &values[i - first])))
            return rc;
        chain_next(r, key, len, parent);
    }
    return 0;
}

int ec_context_gather(ec_results *r, const int32_t *tokens, size_t n, size_t block_tokens,
                      size_t count, void *out, size_t block_bytes, int device, size_t *got)
{
    uint8_t parent[CHAIN_BYTES] = {0}, key[EC_RES_KEY_MAX];
    const ec_backend *be = cl_be();
    uint8_t *stage = NULL;
    ec_result_meta m;
    size_t i;
    int rc = 0;

    if (got)
        *got = 0;
    if ((rc = args_ok(r, tokens, n, block_tokens)))
        return rc;
    if (count > n / block_tokens || (count && (!out || !block_bytes)))
        return ec_seterr(EC_EINVAL, "context: %zu blocks of %zu bytes from a sequence of %zu "
                                    "whole blocks",
                         count, block_bytes, n / block_tokens);
    if (device >= 0) {
        if (!be->copy_to_device)
            return ec_seterr(EC_EDEVICE, "context: gathering to GPU %d needs the CUDA backend "
                                         "(this libembcache runs \"%s\")",
                             device, be->name);
        if (be->check_ptr && (rc = be->check_ptr(out, device)))
            return rc;
        if (!(stage = malloc(block_bytes)))
            return ec_seterr(EC_ENOMEM, "context: a staging block of %zu bytes", block_bytes);
    }
    for (i = 0; i < count; i++) {
        size_t len = block_key(r, parent, tokens + i * block_tokens, block_tokens, key);
        uint8_t *dst = stage ? stage : (uint8_t *)out + i * block_bytes;
        rc = ec_results_get(r, key, len, EC_RES_ALLOW_STALE, dst, block_bytes, &m);
        if (rc == 0) {
            rc = ec_seterr(EC_ENOENT, "context: block %zu of the sequence is not cached", i);
            break;
        }
        if (rc == EC_ETOOBIG || (rc == 1 && m.len != block_bytes)) {
            rc = ec_seterr(EC_ERANGE, "context: block %zu holds %zu bytes, not %zu", i, m.len,
                           block_bytes);
            break;
        }
        if (rc < 0)
            break;
        if (stage && (rc = be->copy_to_device((uint8_t *)out + i * block_bytes, stage,
                                              block_bytes, device, NULL)))
            break;
        rc = 0;
        chain_next(r, key, len, parent);
    }
    free(stage);
    if (got)
        *got = i;
    return rc;
}
