/*
 * catalog_names.c - what the catalog accepts as a model, tensor or alias
 * name and as a partition file path (ec_catalog_check_name, cat_path_ok).
 *
 * Pure functions of their arguments: any thread (the daemon's server and
 * importer threads, the CLI) may call them.
 */
#include "core/catalog_impl.h"

#include <string.h>

#include "common/err.h"

/* ------------------------------------------------------------------ */
/* Names and paths                                                     */

enum name_kind { NAME_MODEL, NAME_TENSOR, NAME_ALIAS };

static enum name_kind name_kind_of(const char *what)
{
    if (what && !strcmp(what, "tensor"))
        return NAME_TENSOR;
    if (what && !strcmp(what, "alias"))
        return NAME_ALIAS;
    return NAME_MODEL;
}

bool cat_all_digits(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return false;
    return true;
}

static bool is_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

int ec_catalog_check_name(const char *what, const char *name)
{
    enum name_kind kind = name_kind_of(what);
    const char *w = what ? what : "model";
    const char *allowed = kind == NAME_TENSOR ? "letters, digits, '.', '-', '_', ':' and '/'"
                                              : "letters, digits, '.', '-' and '_'";
    char pbuf[72];
    size_t len;

    if (!name)
        return ec_seterr(EC_EINVAL, "no %s name given", w);
    len = strnlen(name, EC_NAME_MAX + 1);
    if (len == 0)
        return ec_seterr(EC_EINVAL, "empty %s name; use 1..%d bytes of %s", w, EC_NAME_MAX,
                         allowed);
    if (len > EC_NAME_MAX)
        return ec_seterr(EC_EINVAL, "%s name '%s' is longer than %d bytes", w,
                         ec_printable(name, strlen(name), pbuf, 68), EC_NAME_MAX);
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        bool ok = is_alnum(c) || c == '.' || c == '-' || c == '_' ||
                  (kind == NAME_TENSOR && (c == ':' || c == '/'));
        if (!ok)
            return ec_seterr(EC_EINVAL,
                             "%s name '%s' has a character not allowed (byte 0x%02x at "
                             "offset %zu); use %s",
                             w, ec_printable(name, strlen(name), pbuf, 68), (unsigned)(unsigned char)c, i, allowed);
    }
    if (kind == NAME_TENSOR) {
        /* '/' separates components; none may be empty, "." or "..", so a
         * tensor name can never walk out of a directory it is put in. */
        const char *p = name;
        while (1) {
            const char *e = strchr(p, '/');
            size_t n = e ? (size_t)(e - p) : strlen(p);
            if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
                return ec_seterr(EC_EINVAL,
                                 "tensor name '%s' has an empty, '.' or '..' path component",
                                 ec_printable(name, strlen(name), pbuf, 68));
            if (!e)
                break;
            p = e + 1;
        }
        return 0;
    }
    if (name[0] == '-' || name[0] == '.')
        return ec_seterr(EC_EINVAL,
                         "%s name '%s' must not start with '-' or '.'; start it with a letter, "
                         "digit or '_'",
                         w, ec_printable(name, strlen(name), pbuf, 68));
    if (kind == NAME_ALIAS && cat_all_digits(name))
        return ec_seterr(EC_EINVAL,
                         "alias '%s' is all digits and would read as a version number; "
                         "use a name such as 'current'",
                         name);
    return 0;
}

/* A partition file path: relative, 1..EC_CAT_PATH_MAX-1 bytes, printable,
 * no empty, "." or ".." components. */
bool cat_path_ok(const char *path, size_t maxlen)
{
    size_t len = strnlen(path, maxlen + 1);

    if (len == 0 || len > maxlen || path[0] == '/')
        return false;
    for (size_t i = 0; i < len; i++)
        if (path[i] < 0x21 || path[i] > 0x7e)
            return false;
    for (const char *p = path;;) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
            return false;
        if (!e)
            return true;
        p = e + 1;
    }
}

