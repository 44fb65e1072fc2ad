/*
 * topology.c - NUMA placement for the daemon through hwloc (see topology.h).
 *
 * The engine loads the topology once at start-up (I/O devices included) and
 * asks three questions of it: which NUMA node is closest to the data
 * directory's disk (or to a GPU), which CPUs and memory belong to that node,
 * and what the machine looks like, for the log and for stats.
 *
 * A disk is found from a path the way the kernel names it: stat()'s st_dev
 * -> /sys/dev/block/MAJ:MIN (a symlink into /sys/devices/...) -> the whole
 * disk (a partition's parent directory; a device-mapper or md device's
 * slaves/, recursively) -> a NUMA node, asking in order hwloc's block OS
 * device of that name, hwloc's PCI device whose bus id appears in the sysfs
 * path, and the numa_node attribute of the sysfs ancestors. A device's node
 * is the node set of its first non-I/O ancestor in hwloc's tree; a device
 * hanging off the whole machine on a multi-node machine has no locality
 * (-1), on a one-node machine it is on that node.
 *
 * Everything read from /sys is bounded (PATH_MAX paths, short attribute
 * reads) and parsed strictly; a node number is used only if the topology
 * has that node. hwloc failures become EC_E* codes with messages.
 *
 * After load the handle is read-only; hwloc allows concurrent read-only use
 * of a loaded topology, so the query and bind functions are thread-safe.
 */
#include "core/topology.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hwloc.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"

#if HWLOC_API_VERSION < 0x00020000 || HWLOC_API_VERSION >= 0x00030000
/* hwloc 3 replaced osdev.type (an enum) by osdev.types (a bit mask) and
 * renamed BLOCK to STORAGE; port is_block_osdev() before building with it. */
#error "core/topology.c is written for the hwloc 2.x API"
#endif

#define SYSFS_DEVICES "/sys/devices/"
#define MAX_NODE_OS_INDEX 65535  /* well above any machine; bounds /sys input */
#define MAX_SLAVE_DEPTH 4        /* dm on md on partitions is 3 */
#define MAX_SLAVES 64
#define DESC_LIST_MAX 8          /* GPUs / disks listed by name in describe() */
#define PCI_CLASS_VGA 0x0300
#define PCI_CLASS_3D 0x0302
#define PCI_VENDOR_NVIDIA 0x10de

struct ec_topology {
    hwloc_topology_t topo;
    unsigned nodes;     /* NUMA nodes, >= 1 */
    int single_node;    /* OS index of the node when nodes == 1, else -1 */
    bool thissystem;    /* false for an XML topology: never read our /sys */
};

/* ------------------------------------------------------------------ */
/* Loading                                                             */

static int code_of_errno(int e)
{
    switch (e) {
    case ENOMEM:
        return EC_ENOMEM;
    case EPERM:
    case EACCES:
        return EC_EPERM;
    default:
        return EC_EIO;
    }
}

static int load(const char *xml, size_t xml_len, ec_topology **out)
{
    ec_topology *t;
    hwloc_obj_t node;
    char *xml_copy = NULL;
    int err, rc;

    t = calloc(1, sizeof(*t));
    if (t == NULL)
        return ec_seterr(EC_ENOMEM, "cannot allocate the topology handle");
    if (hwloc_topology_init(&t->topo) < 0) {
        err = errno;
        free(t);
        return ec_seterr_errno(err == ENOMEM ? EC_ENOMEM : EC_EIO, err,
                               "hwloc_topology_init failed");
    }
    /* PCI devices, bridges that lead to them, and the block/GPU/network
     * OS devices: what placement needs, without every PCI function. */
    if (hwloc_topology_set_io_types_filter(t->topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT) < 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "hwloc cannot enable I/O device discovery");
        goto fail;
    }
    if (xml != NULL) {
        /* In the form hwloc_topology_export_xmlbuffer() gives: NUL-terminated,
         * the length counting the NUL. */
        xml_copy = malloc(xml_len + 1);
        if (xml_copy == NULL) {
            rc = ec_seterr(EC_ENOMEM, "cannot copy the %zu-byte XML topology", xml_len);
            goto fail;
        }
        memcpy(xml_copy, xml, xml_len);
        xml_copy[xml_len] = '\0';
        if (hwloc_topology_set_xmlbuffer(t->topo, xml_copy, (int)xml_len + 1) < 0) {
            rc = ec_seterr_errno(EC_EFORMAT, errno,
                                 "hwloc cannot use the %zu-byte XML topology", xml_len);
            goto fail;
        }
    }
    if (hwloc_topology_load(t->topo) < 0) {
        err = errno;
        if (xml != NULL)
            rc = ec_seterr_errno(EC_EFORMAT, err,
                                 "hwloc rejected the XML topology (is it an lstopo --of xml "
                                 "export?)");
        else
            rc = ec_seterr_errno(err == ENOMEM ? EC_ENOMEM : EC_EIO, err,
                                 "hwloc cannot discover this machine's topology (is /sys "
                                 "mounted? HWLOC_* variables in the environment?)");
        goto fail;
    }

    {
        int n = hwloc_get_nbobjs_by_type(t->topo, HWLOC_OBJ_NUMANODE);
        t->nodes = n > 0 ? (unsigned)n : 1u;
    }
    t->single_node = -1;
    if (t->nodes == 1) {
        node = hwloc_get_obj_by_type(t->topo, HWLOC_OBJ_NUMANODE, 0);
        t->single_node =
            node != NULL && node->os_index <= MAX_NODE_OS_INDEX ? (int)node->os_index : 0;
    }
    t->thissystem = hwloc_topology_is_thissystem(t->topo) != 0;
    free(xml_copy);
    *out = t;
    return 0;

fail:
    hwloc_topology_destroy(t->topo);
    free(xml_copy);
    free(t);
    return rc;
}

int ec_topology_load(ec_topology **out)
{
    if (out == NULL)
        return ec_seterr(EC_EINVAL, "ec_topology_load: out is NULL");
    return load(NULL, 0, out);
}

int ec_topology_load_xml(const char *xml, size_t len, ec_topology **out)
{
    if (xml == NULL || out == NULL || len == 0 || len >= INT_MAX - 1)
        return ec_seterr(EC_EINVAL, "ec_topology_load_xml: need XML text of 1..%d bytes and out",
                         INT_MAX - 2);
    return load(xml, len, out);
}

void ec_topology_free(ec_topology *t)
{
    if (t == NULL)
        return;
    hwloc_topology_destroy(t->topo);
    free(t);
}

unsigned ec_topology_numa_nodes(const ec_topology *t)
{
    return t != NULL ? t->nodes : 1u;
}

/* ------------------------------------------------------------------ */
/* Objects to nodes                                                    */

static bool is_block_osdev(hwloc_obj_t obj)
{
    return obj->type == HWLOC_OBJ_OS_DEVICE && obj->attr != NULL &&
           obj->attr->osdev.type == HWLOC_OBJ_OSDEV_BLOCK;
}

static bool is_nvidia_gpu(hwloc_obj_t obj)
{
    return obj->attr != NULL && obj->attr->pcidev.vendor_id == PCI_VENDOR_NVIDIA &&
           (obj->attr->pcidev.class_id == PCI_CLASS_VGA ||
            obj->attr->pcidev.class_id == PCI_CLASS_3D);
}

/* A node OS index the topology has, or false. */
static bool node_exists(const ec_topology *t, long node)
{
    return node >= 0 && node <= MAX_NODE_OS_INDEX &&
           hwloc_get_numanode_obj_by_os_index(t->topo, (unsigned)node) != NULL;
}

/* The node closest to an I/O object: the node set of its first non-I/O
 * ancestor. A locality that is the whole machine is no locality unless the
 * machine has one node; a locality of several nodes (a package holding two
 * sub-NUMA clusters) answers its lowest node, as close as any other. */
static int node_of_obj(const ec_topology *t, hwloc_obj_t obj)
{
    hwloc_obj_t anc = hwloc_get_non_io_ancestor_obj(t->topo, obj);
    hwloc_const_nodeset_t all;
    int w, first;

    if (anc == NULL || anc->nodeset == NULL || hwloc_bitmap_iszero(anc->nodeset))
        return t->single_node;
    if (t->nodes == 1)
        return t->single_node;
    all = hwloc_topology_get_topology_nodeset(t->topo);
    w = hwloc_bitmap_weight(anc->nodeset);
    if (w <= 0 || (all != NULL && hwloc_bitmap_isincluded(all, anc->nodeset)))
        return -1;
    first = hwloc_bitmap_first(anc->nodeset);
    return node_exists(t, first) ? first : -1;
}

/* ------------------------------------------------------------------ */
/* Parsing                                                             */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Take between min and max hex digits at *p, and no more. */
static bool take_hex(const char **p, unsigned min, unsigned max, unsigned *v)
{
    unsigned n = 0, x = 0;

    while (n < max && hexval((*p)[n]) >= 0) {
        x = x * 16u + (unsigned)hexval((*p)[n]);
        n++;
    }
    if (n < min || hexval((*p)[n]) >= 0)
        return false;
    *p += n;
    *v = x;
    return true;
}

struct busid {
    unsigned domain, bus, dev, func;
};

/* "DDDD:BB:DD.F" (domain of 1..8 hex digits) or "BB:DD.F", exactly. */
static bool parse_busid(const char *s, struct busid *out)
{
    struct busid b = {0, 0, 0, 0};
    const char *p = s;

    if (take_hex(&p, 1, 8, &b.domain) && *p == ':') {
        p++;
        if (!take_hex(&p, 2, 2, &b.bus) || *p++ != ':')
            goto short_form;
    } else {
        goto short_form;
    }
    goto tail;
short_form:
    p = s;
    b.domain = 0;
    if (!take_hex(&p, 2, 2, &b.bus) || *p++ != ':')
        return false;
tail:
    if (!take_hex(&p, 2, 2, &b.dev) || *p++ != '.' || !take_hex(&p, 1, 1, &b.func) ||
        *p != '\0' || b.dev > 0x1f || b.func > 7)
        return false;
    *out = b;
    return true;
}

/* Read a small decimal attribute from sysfs ("0\n", "-1\n"). Returns true
 * with *out set when the file holds one integer in [-1, MAX_NODE_OS_INDEX]. */
static bool read_sysfs_node(const char *path, long *out)
{
    char buf[32];
    char *end;
    ssize_t n;
    long v;
    int fd;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    do {
        n = read(fd, buf, sizeof(buf) - 1);
    } while (n < 0 && errno == EINTR);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    while (n > 0 && isspace((unsigned char)buf[n - 1]))
        buf[--n] = '\0';
    if (n == 0)
        return false;
    errno = 0;
    v = strtol(buf, &end, 10);
    if (errno != 0 || end == buf || *end != '\0' || v < -1 || v > MAX_NODE_OS_INDEX)
        return false;
    *out = v;
    return true;
}

/* ------------------------------------------------------------------ */
/* Disks                                                               */

static int node_of_diskdir(const ec_topology *t, const char *sysdir, unsigned depth,
                           char *disk, size_t disk_len);

/* A device-mapper / md device: the node its slaves agree on. *found says
 * whether it had slaves at all. */
static int node_of_slaves(const ec_topology *t, const char *dir, const char *name,
                          unsigned depth, bool *found)
{
    char path[PATH_MAX], real[PATH_MAX];
    struct dirent *de;
    unsigned n = 0;
    int node = -1, first = -2;
    bool span = false;
    DIR *d;

    *found = false;
    if ((size_t)snprintf(path, sizeof(path), "%s/slaves", dir) >= sizeof(path))
        return -1;
    d = opendir(path);
    if (d == NULL)
        return -1;
    while ((de = readdir(d)) != NULL && n < MAX_SLAVES) {
        if (de->d_name[0] == '.')
            continue;
        n++;
        if ((size_t)snprintf(path, sizeof(path), "/sys/class/block/%s", de->d_name) >=
                sizeof(path) ||
            realpath(path, real) == NULL)
            continue;
        node = node_of_diskdir(t, real, depth + 1, NULL, 0);
        if (first == -2)
            first = node;
        else if (node != first)
            span = true;
    }
    closedir(d);
    if (n == 0)
        return -1;
    *found = true;
    if (span || first < 0) {
        ec_seterr(EC_ENOENT, "block device %s sits on %u device(s) %s", name, n,
                  span ? "on different NUMA nodes" : "of unknown NUMA locality");
        return -1;
    }
    return first;
}

/* The node of the disk whose sysfs directory (a realpath under
 * /sys/devices) is sysdir; a partition is resolved to its disk. The disk's
 * name is copied to disk (when not NULL). */
static int node_of_diskdir(const ec_topology *t, const char *sysdir, unsigned depth,
                           char *disk, size_t disk_len)
{
    char dir[PATH_MAX], attr[PATH_MAX];
    const char *name;
    char *slash;
    struct stat st;
    hwloc_obj_t obj;
    long v;
    int node;
    bool had_slaves;

    if (depth > MAX_SLAVE_DEPTH)
        return ec_seterr(EC_ENOENT, "block devices stacked more than %d deep", MAX_SLAVE_DEPTH),
               -1;
    if (strlen(sysdir) >= sizeof(dir) || strncmp(sysdir, SYSFS_DEVICES, strlen(SYSFS_DEVICES)))
        return ec_seterr(EC_ENOENT, "unexpected sysfs block device path"), -1;
    strcpy(dir, sysdir);

    /* A partition's directory sits inside its disk's and has "partition". */
    if ((size_t)snprintf(attr, sizeof(attr), "%s/partition", dir) < sizeof(attr) &&
        stat(attr, &st) == 0) {
        slash = strrchr(dir, '/');
        if (slash == NULL || slash - dir <= (ptrdiff_t)strlen(SYSFS_DEVICES))
            return ec_seterr(EC_ENOENT, "unexpected sysfs partition path"), -1;
        *slash = '\0';
    }
    slash = strrchr(dir, '/');
    name = slash != NULL ? slash + 1 : dir;
    if (disk != NULL && disk_len > 0)
        ec_printable(name, strlen(name), disk, disk_len);

    node = node_of_slaves(t, dir, name, depth, &had_slaves);
    if (had_slaves)
        return node;

    /* 1. hwloc's OS device of that name (nvme0n1, sda, vda). */
    for (obj = hwloc_get_next_osdev(t->topo, NULL); obj != NULL;
         obj = hwloc_get_next_osdev(t->topo, obj)) {
        if (is_block_osdev(obj) && obj->name != NULL && strcmp(obj->name, name) == 0) {
            node = node_of_obj(t, obj);
            if (node >= 0)
                return node;
            break;
        }
    }
    if (!t->thissystem)
        goto unknown;

    /* 2. the deepest PCI function in the sysfs path, as hwloc knows it. */
    strcpy(attr, dir);
    while ((slash = strrchr(attr, '/')) != NULL &&
           slash - attr >= (ptrdiff_t)strlen(SYSFS_DEVICES) - 1) {
        struct busid b;
        if (parse_busid(slash + 1, &b)) {
            obj = hwloc_get_pcidev_by_busid(t->topo, b.domain, b.bus, b.dev, b.func);
            if (obj != NULL) {
                node = node_of_obj(t, obj);
                if (node >= 0)
                    return node;
            }
            break;
        }
        *slash = '\0';
    }

    /* 3. the kernel's numa_node of the disk or a parent (PCI function). */
    strcpy(attr, dir);
    while (strlen(attr) > strlen(SYSFS_DEVICES)) {
        char file[PATH_MAX];
        if ((size_t)snprintf(file, sizeof(file), "%s/numa_node", attr) < sizeof(file) &&
            read_sysfs_node(file, &v) && v >= 0 && node_exists(t, v))
            return (int)v;
        slash = strrchr(attr, '/');
        if (slash == NULL)
            break;
        *slash = '\0';
    }

unknown:
    if (t->nodes == 1)
        return t->single_node;
    ec_seterr(EC_ENOENT,
              "the NUMA node of block device %s is unknown (the firmware reports no locality; "
              "typical of VMs)", name);
    return -1;
}

/* The node of the disk holding path; its name goes to disk ("" if none). */
static int node_of_path(const ec_topology *t, const char *path, char *disk, size_t disk_len)
{
    char link[64], real[PATH_MAX], shown[96];
    struct stat st;
    dev_t dev;
    int err;

    if (disk_len > 0)
        disk[0] = '\0';
    if (t == NULL || path == NULL)
        return ec_seterr(EC_EINVAL, "ec_topology_node_of_path: NULL argument"), -1;
    if (stat(path, &st) != 0) {
        err = errno;
        ec_printable(path, strlen(path), shown, sizeof(shown));
        return ec_seterr_errno(err == ENOENT ? EC_ENOENT : EC_EIO, err,
                               "cannot find the device of '%s'", shown),
               -1;
    }
    dev = S_ISBLK(st.st_mode) ? st.st_rdev : st.st_dev;
    if (major(dev) == 0) {
        ec_printable(path, strlen(path), shown, sizeof(shown));
        return ec_seterr(EC_ENOENT,
                         "'%s' is on no block device (device 0:%u: tmpfs, overlayfs, NFS or "
                         "btrfs); its NUMA node is unknown", shown, minor(dev)),
               -1;
    }
    snprintf(link, sizeof(link), "/sys/dev/block/%u:%u", major(dev), minor(dev));
    if (realpath(link, real) == NULL) {
        err = errno;
        ec_printable(path, strlen(path), shown, sizeof(shown));
        return ec_seterr_errno(EC_ENOENT, err,
                               "the block device %u:%u of '%s' is not in /sys (a container "
                               "without /sys/dev/block?)", major(dev), minor(dev), shown),
               -1;
    }
    return node_of_diskdir(t, real, 0, disk, disk_len);
}

int ec_topology_node_of_path(const ec_topology *t, const char *path)
{
    char disk[64];
    return node_of_path(t, path, disk, sizeof(disk));
}

int ec_topology_node_of_pci(const ec_topology *t, const char *busid)
{
    char shown[48], norm[32], file[96];
    struct busid b;
    hwloc_obj_t obj;
    bool exists;
    long v;
    int node;

    if (t == NULL || busid == NULL)
        return ec_seterr(EC_EINVAL, "ec_topology_node_of_pci: NULL argument"), -1;
    ec_printable(busid, strnlen(busid, 64), shown, sizeof(shown));
    if (strnlen(busid, 32) >= 32 || !parse_busid(busid, &b))
        return ec_seterr(EC_EINVAL,
                         "malformed PCI bus id '%s' (expected DDDD:BB:DD.F, e.g. 0000:3b:00.0)",
                         shown),
               -1;
    snprintf(norm, sizeof(norm), "%04x:%02x:%02x.%x", b.domain, b.bus, b.dev, b.func);
    obj = hwloc_get_pcidev_by_busidstring(t->topo, norm);
    if (obj != NULL) {
        node = node_of_obj(t, obj);
        if (node >= 0)
            return node;
    }
    exists = obj != NULL;
    /* hwloc may have filtered the function out; the kernel still knows. */
    if (t->thissystem) {
        snprintf(file, sizeof(file), "/sys/bus/pci/devices/%s/numa_node", norm);
        if (read_sysfs_node(file, &v)) {
            if (v >= 0 && node_exists(t, v))
                return (int)v;
            exists = true;
        }
    }
    if (!exists)
        return ec_seterr(EC_ENOENT, "no PCI device %s on this machine", norm), -1;
    if (t->nodes == 1)
        return t->single_node;
    return ec_seterr(EC_ENOENT, "the NUMA node of PCI device %s is unknown", norm), -1;
}

/* ------------------------------------------------------------------ */
/* Binding                                                             */

static hwloc_obj_t numa_obj(const ec_topology *t, int node)
{
    hwloc_obj_t obj = hwloc_get_numanode_obj_by_os_index(t->topo, (unsigned)node);
    if (obj == NULL)
        ec_seterr(EC_EINVAL, "no NUMA node %d (this machine has %u node(s))", node, t->nodes);
    return obj;
}

int ec_topology_bind_thread(const ec_topology *t, int node)
{
    hwloc_bitmap_t set;
    hwloc_obj_t obj;
    int rc = 0, err;

    if (t == NULL)
        return ec_seterr(EC_EINVAL, "ec_topology_bind_thread: NULL topology");
    if (node < 0 || t->nodes <= 1)
        return 0;
    obj = numa_obj(t, node);
    if (obj == NULL)
        return EC_EINVAL;
    set = hwloc_bitmap_dup(obj->cpuset);
    if (set == NULL)
        return ec_seterr(EC_ENOMEM, "cannot allocate a CPU set for node %d", node);
    hwloc_bitmap_and(set, set, hwloc_topology_get_allowed_cpuset(t->topo));
    if (hwloc_bitmap_iszero(set)) {
        rc = ec_seterr(EC_EINVAL,
                       "NUMA node %d has no CPU this process may use (memory-only node, or "
                       "excluded by its cpuset); the thread is not bound", node);
        goto out;
    }
    if (hwloc_set_cpubind(t->topo, set, HWLOC_CPUBIND_THREAD) < 0) {
        err = errno;
        rc = ec_seterr_errno(code_of_errno(err), err,
                             "cannot bind this thread to the CPUs of NUMA node %d", node);
        goto out;
    }
out:
    hwloc_bitmap_free(set);
    return rc;
}

int ec_topology_bind_memory(const ec_topology *t, void *addr, size_t len, int node)
{
    hwloc_obj_t obj;
    int err;

    if (t == NULL || (addr == NULL && len > 0))
        return ec_seterr(EC_EINVAL, "ec_topology_bind_memory: NULL argument");
    if (len == 0 || node < 0 || t->nodes <= 1)
        return 0;
    obj = numa_obj(t, node);
    if (obj == NULL)
        return EC_EINVAL;
    /* BIND without STRICT: hwloc asks Linux for MPOL_PREFERRED, so a full
     * node spills over rather than failing page faults in the segment. */
    if (hwloc_set_area_membind(t->topo, addr, len, obj->nodeset, HWLOC_MEMBIND_BIND,
                               HWLOC_MEMBIND_BYNODESET) == 0)
        return 0;
    err = errno;
    if (err == EPERM || err == EACCES)
        return ec_seterr_errno(EC_EPERM, err,
                               "mbind of %zu bytes to NUMA node %d refused (in a container the "
                               "default seccomp profile needs CAP_SYS_NICE); pages stay where "
                               "first touch puts them", len, node);
    if (err == ENOSYS || err == EXDEV)
        return ec_seterr_errno(EC_EIO, err,
                               "binding memory to NUMA node %d is not supported here", node);
    return ec_seterr_errno(code_of_errno(err), err,
                           "cannot bind %zu bytes of memory to NUMA node %d", len, node);
}

/* ------------------------------------------------------------------ */
/* Description                                                         */

struct line {
    char *buf;
    size_t len;   /* size of buf, > 0 */
    size_t need;  /* bytes the whole line needs, NUL excluded */
};

static void add(struct line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void add(struct line *l, const char *fmt, ...)
{
    size_t pos = l->need < l->len ? l->need : l->len - 1;
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(l->buf + pos, l->len - pos, fmt, ap);
    va_end(ap);
    if (n > 0)
        l->need += (size_t)n;
}

static void add_node(struct line *l, int node)
{
    if (node >= 0)
        add(l, " (node %d)", node);
    else
        add(l, " (node ?)");
}

static unsigned count(const ec_topology *t, hwloc_obj_type_t type)
{
    int n = hwloc_get_nbobjs_by_type(t->topo, type);
    return n > 0 ? (unsigned)n : 0u;
}

int ec_topology_describe(const ec_topology *t, const char *data_dir, char *buf, size_t len)
{
    struct line l = {buf, len, 0};
    char disk[64], name[64];
    struct stat st;
    hwloc_obj_t obj;
    unsigned n, shown;
    int node;

    if (t == NULL || buf == NULL || len == 0)
        return ec_seterr(EC_EINVAL, "ec_topology_describe: NULL argument or empty buffer");
    buf[0] = '\0';

    add(&l, "%u package(s), %u NUMA node(s), %u core(s), %u PU(s)",
        count(t, HWLOC_OBJ_PACKAGE), t->nodes, count(t, HWLOC_OBJ_CORE),
        count(t, HWLOC_OBJ_PU));

    n = shown = 0;
    for (obj = hwloc_get_next_pcidev(t->topo, NULL); obj != NULL;
         obj = hwloc_get_next_pcidev(t->topo, obj))
        n += is_nvidia_gpu(obj);
    add(&l, "; %u GPU(s)", n);
    for (obj = hwloc_get_next_pcidev(t->topo, NULL); obj != NULL && n > 0;
         obj = hwloc_get_next_pcidev(t->topo, obj)) {
        if (!is_nvidia_gpu(obj))
            continue;
        if (shown == DESC_LIST_MAX) {
            add(&l, ", +%u more", n - shown);
            break;
        }
        add(&l, "%s%04x:%02x:%02x.%x", shown == 0 ? ": " : ", ", obj->attr->pcidev.domain,
            obj->attr->pcidev.bus, obj->attr->pcidev.dev, obj->attr->pcidev.func);
        add_node(&l, node_of_obj(t, obj));
        shown++;
    }

    n = shown = 0;
    for (obj = hwloc_get_next_osdev(t->topo, NULL); obj != NULL;
         obj = hwloc_get_next_osdev(t->topo, obj))
        n += is_block_osdev(obj);
    add(&l, "; block:%s", n == 0 ? " none" : "");
    for (obj = hwloc_get_next_osdev(t->topo, NULL); obj != NULL && n > 0;
         obj = hwloc_get_next_osdev(t->topo, obj)) {
        if (!is_block_osdev(obj))
            continue;
        if (shown == DESC_LIST_MAX) {
            add(&l, ", +%u more", n - shown);
            break;
        }
        ec_printable(obj->name != NULL ? obj->name : "?",
                     obj->name != NULL ? strlen(obj->name) : 1, name, sizeof(name));
        add(&l, "%s%s", shown == 0 ? " " : ", ", name);
        add_node(&l, node_of_obj(t, obj));
        shown++;
    }

    if (data_dir != NULL) {
        node = node_of_path(t, data_dir, disk, sizeof(disk));
        if (disk[0] != '\0') {
            add(&l, "; data dir on %s", disk);
            add_node(&l, node);
        } else if (stat(data_dir, &st) != 0) {
            add(&l, "; data dir missing (node ?)");
        } else {
            add(&l, "; data dir on no block device (node ?)");
        }
    }

    if (l.need >= len)
        return ec_seterr(EC_ETOOBIG, "the topology description needs %zu bytes, the buffer has %zu",
                         l.need + 1, len);
    return 0;
}
