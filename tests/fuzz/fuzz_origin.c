/*
 * fuzz_origin.c - fuzz target for the origin record of partition files
 * (ec_partfile_origin_decode in core/partfile_origin.c), which
 * `embcache recover` reads from files it has no catalog to vouch for.
 *
 * The input, cut or zero-padded to the record's fixed size, is decoded; a
 * failure must leave the output untouched and return an EC_E* code; a
 * success must hold only what the decoder promises (names of sane length
 * and NUL-terminated, version >= 1, round >= -1, params NUL-terminated and
 * empty when lost), and must encode back to a record that decodes to the
 * same origin. Built with driver.c (ctest smoke run) or with libFuzzer
 * (EMBCACHE_FUZZ=ON).
 */
#include <string.h>

#include "core/partfile.h"
#include "fuzz.h"

#define REC (EC_PARTFILE_ALIGN - EC_PARTFILE_ORIGIN_OFF)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned char rec[REC], again[REC];
    static ec_partfile_origin o, o2, untouched;
    int rc;

    memset(rec, 0, sizeof(rec));
    memcpy(rec, data, size < REC ? size : REC);
    memset(&o, 0x5a, sizeof(o));
    memset(&untouched, 0x5a, sizeof(untouched));
    rc = ec_partfile_origin_decode(rec, REC, &o);
    if (rc != 0) {
        FUZZ_CHECK(rc < 0 && rc >= EC_E_LAST);
        FUZZ_CHECK(memcmp(&o, &untouched, sizeof(o)) == 0);
        return 0;
    }
    if (!o.present)
        return 0;
    FUZZ_CHECK(memchr(o.model, 0, sizeof(o.model)) != NULL && o.model[0]);
    FUZZ_CHECK(memchr(o.tensor, 0, sizeof(o.tensor)) != NULL && o.tensor[0]);
    FUZZ_CHECK(memchr(o.params_json, 0, sizeof(o.params_json)) != NULL);
    FUZZ_CHECK(o.version >= 1 && o.round >= -1 && o.version_tensors >= 1);
    FUZZ_CHECK(!o.params_lost || o.params_json[0] == '\0');
    /* What decodes encodes back to the same origin. */
    o2 = o;
    if (ec_partfile_origin_encode(&o, o.params_lost ? NULL : o.params_json, again, REC,
                                  NULL) == 0) {
        memset(&o2, 0, sizeof(o2));
        FUZZ_CHECK(ec_partfile_origin_decode(again, REC, &o2) == 0);
        FUZZ_CHECK(strcmp(o2.model, o.model) == 0 && strcmp(o2.tensor, o.tensor) == 0);
        FUZZ_CHECK(o2.version == o.version && o2.round == o.round &&
                   o2.created_unix == o.created_unix &&
                   o2.version_tensors == o.version_tensors);
        FUZZ_CHECK(strcmp(o2.params_json, o.params_json) == 0);
    }
    return 0;
}
