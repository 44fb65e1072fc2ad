/*
 * test_topology.c - core/topology.c: NUMA placement through hwloc.
 *
 * Two topologies: this machine's (whatever it is: the answers must be -1 or
 * a node it has, binds must succeed or fail with a message), and a fixed
 * two-node machine loaded from hwloc XML, with an NVIDIA GPU on node 1, an
 * NVMe disk on node 0 and a virtio disk with no locality, where every answer
 * is known. Binds on the XML machine check their arguments and then do
 * nothing (hwloc's "not this system"). Prints this machine's describe()
 * line. Single-threaded but for the thread-binding and concurrency cases.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/err.h"
#include "core/topology.h"
#include "testutil.h"

/* Two packages, one NUMA node and two single-PU cores each. Package 0 has
 * an NVMe disk (class 0108) and a non-NVIDIA VGA device; package 1 has an
 * NVIDIA 3D controller (class 0302); a virtio disk hangs off the machine. */
static const char two_node_xml[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<!DOCTYPE topology SYSTEM \"hwloc2.dtd\">\n"
    "<topology version=\"2.0\">\n"
    " <object type=\"Machine\" os_index=\"0\" cpuset=\"0x0000000f\" complete_cpuset=\"0x0000000f\""
    "  allowed_cpuset=\"0x0000000f\" nodeset=\"0x00000003\" complete_nodeset=\"0x00000003\""
    "  allowed_nodeset=\"0x00000003\" gp_index=\"1\">\n"
    "  <object type=\"Package\" os_index=\"0\" cpuset=\"0x00000003\" complete_cpuset=\"0x00000003\""
    "   nodeset=\"0x00000001\" complete_nodeset=\"0x00000001\" gp_index=\"2\">\n"
    "   <object type=\"NUMANode\" os_index=\"0\" cpuset=\"0x00000003\" complete_cpuset=\"0x00000003\""
    "    nodeset=\"0x00000001\" complete_nodeset=\"0x00000001\" gp_index=\"3\" local_memory=\"1073741824\"/>\n"
    "   <object type=\"Core\" os_index=\"0\" cpuset=\"0x00000001\" complete_cpuset=\"0x00000001\""
    "    nodeset=\"0x00000001\" complete_nodeset=\"0x00000001\" gp_index=\"4\">\n"
    "    <object type=\"PU\" os_index=\"0\" cpuset=\"0x00000001\" complete_cpuset=\"0x00000001\""
    "     nodeset=\"0x00000001\" complete_nodeset=\"0x00000001\" gp_index=\"5\"/>\n"
    "   </object>\n"
    "   <object type=\"Core\" os_index=\"1\" cpuset=\"0x00000002\" complete_cpuset=\"0x00000002\""
    "    nodeset=\"0x00000001\" complete_nodeset=\"0x00000001\" gp_index=\"6\">\n"
    "    <object type=\"PU\" os_index=\"1\" cpuset=\"0x00000002\" complete_cpuset=\"0x00000002\""
    "     nodeset=\"0x00000001\" complete_nodeset=\"0x00000001\" gp_index=\"7\"/>\n"
    "   </object>\n"
    "   <object type=\"Bridge\" gp_index=\"8\" bridge_type=\"0-1\" depth=\"0\" bridge_pci=\"0000:[00-01]\">\n"
    "    <object type=\"PCIDev\" gp_index=\"9\" pci_busid=\"0000:01:00.0\""
    "     pci_type=\"0108 [144d:a80a] [144d:a801] 00\" pci_link_speed=\"7.876923\">\n"
    "     <object type=\"OSDev\" gp_index=\"10\" name=\"nvme0n1\" osdev_type=\"0\"/>\n"
    "    </object>\n"
    "    <object type=\"PCIDev\" gp_index=\"11\" pci_busid=\"0000:00:05.0\""
    "     pci_type=\"0300 [1234:1111] [1af4:1100] 02\" pci_link_speed=\"0.000000\"/>\n"
    "   </object>\n"
    "  </object>\n"
    "  <object type=\"Package\" os_index=\"1\" cpuset=\"0x0000000c\" complete_cpuset=\"0x0000000c\""
    "   nodeset=\"0x00000002\" complete_nodeset=\"0x00000002\" gp_index=\"12\">\n"
    "   <object type=\"NUMANode\" os_index=\"1\" cpuset=\"0x0000000c\" complete_cpuset=\"0x0000000c\""
    "    nodeset=\"0x00000002\" complete_nodeset=\"0x00000002\" gp_index=\"13\" local_memory=\"1073741824\"/>\n"
    "   <object type=\"Core\" os_index=\"2\" cpuset=\"0x00000004\" complete_cpuset=\"0x00000004\""
    "    nodeset=\"0x00000002\" complete_nodeset=\"0x00000002\" gp_index=\"14\">\n"
    "    <object type=\"PU\" os_index=\"2\" cpuset=\"0x00000004\" complete_cpuset=\"0x00000004\""
    "     nodeset=\"0x00000002\" complete_nodeset=\"0x00000002\" gp_index=\"15\"/>\n"
    "   </object>\n"
    "   <object type=\"Core\" os_index=\"3\" cpuset=\"0x00000008\" complete_cpuset=\"0x00000008\""
    "    nodeset=\"0x00000002\" complete_nodeset=\"0x00000002\" gp_index=\"16\">\n"
    "    <object type=\"PU\" os_index=\"3\" cpuset=\"0x00000008\" complete_cpuset=\"0x00000008\""
    "     nodeset=\"0x00000002\" complete_nodeset=\"0x00000002\" gp_index=\"17\"/>\n"
    "   </object>\n"
    "   <object type=\"Bridge\" gp_index=\"18\" bridge_type=\"0-1\" depth=\"0\" bridge_pci=\"0000:[3a-3b]\">\n"
    "    <object type=\"Bridge\" gp_index=\"19\" bridge_type=\"1-1\" depth=\"1\" bridge_pci=\"0000:[3b-3b]\""
    "     pci_busid=\"0000:3a:00.0\" pci_type=\"0604 [8086:2030] [0000:0000] 04\" pci_link_speed=\"0.000000\">\n"
    "     <object type=\"PCIDev\" gp_index=\"20\" pci_busid=\"0000:3b:00.0\""
    "      pci_type=\"0302 [10de:20b0] [10de:134f] a1\" pci_link_speed=\"15.753846\"/>\n"
    "    </object>\n"
    "   </object>\n"
    "  </object>\n"
    "  <object type=\"Bridge\" gp_index=\"21\" bridge_type=\"0-1\" depth=\"0\" bridge_pci=\"0000:[80-80]\">\n"
    "   <object type=\"PCIDev\" gp_index=\"22\" pci_busid=\"0000:80:02.0\""
    "    pci_type=\"0180 [1af4:1042] [1af4:1042] 01\" pci_link_speed=\"0.000000\">\n"
    "    <object type=\"OSDev\" gp_index=\"23\" name=\"vdb\" osdev_type=\"0\"/>\n"
    "   </object>\n"
    "  </object>\n"
    " </object>\n"
    "</topology>\n";

static ec_topology *load_two_node(void)
{
    ec_topology *t = NULL;
    int rc = ec_topology_load_xml(two_node_xml, sizeof(two_node_xml) - 1, &t);
    if (rc != 0)
        fail_msg("two-node XML: %s: %s", ec_strerror(rc), ec_last_error());
    assert_non_null(t);
    return t;
}

static void assert_msg_contains(const char *needle)
{
    const char *msg = ec_last_error();
    if (strstr(msg, needle) == NULL)
        fail_msg("message '%s' lacks '%s'", msg, needle);
}

/* ------------------------------------------------------------------ */
/* This machine                                                        */

static void test_load_free(void **state)
{
    ec_topology *t = NULL;
    (void)state;

    assert_int_equal(ec_topology_load(&t), 0);
    assert_non_null(t);
    assert_true(ec_topology_numa_nodes(t) >= 1);
    ec_topology_free(t);
    ec_topology_free(NULL);
    assert_int_equal(ec_topology_load(NULL), EC_EINVAL);
}

static void check_node(const ec_topology *t, const char *path, int node)
{
    printf("# node_of_path(%s) = %d%s%s\n", path, node, node < 0 ? ": " : "",
           node < 0 ? ec_last_error() : "");
    assert_true(node >= -1);
    assert_true(node < (int)ec_topology_numa_nodes(t) || ec_topology_numa_nodes(t) > 1);
    if (node < 0)
        assert_true(ec_last_error()[0] != '\0');
}

static void test_node_of_path(void **state)
{
    ec_topology *t = NULL;
    char *dir = ect_tmpdir("topo");
    char file[512];
    (void)state;

    assert_int_equal(ec_topology_load(&t), 0);
    check_node(t, "/", ec_topology_node_of_path(t, "/"));
    check_node(t, dir, ec_topology_node_of_path(t, dir));
    snprintf(file, sizeof(file), "%s/part.ecp", dir);
    assert_int_equal(ect_write_file(file, "x", 1), 0);
    check_node(t, file, ec_topology_node_of_path(t, file));

    /* No block device under these: -1 with a reason. */
    if (access("/dev/shm", F_OK) == 0) {
        ec_clearerr();
        assert_int_equal(ec_topology_node_of_path(t, "/dev/shm"), -1);
        assert_msg_contains("no block device");
    }
    ec_clearerr();
    assert_int_equal(ec_topology_node_of_path(t, "/proc"), -1);
    assert_msg_contains("no block device");

    /* A path that does not exist. */
    ec_clearerr();
    snprintf(file, sizeof(file), "%s/does/not/exist", dir);
    assert_int_equal(ec_topology_node_of_path(t, file), -1);
    assert_msg_contains("cannot find the device of");
    assert_msg_contains("No such file");

    ec_clearerr();
    assert_int_equal(ec_topology_node_of_path(t, NULL), -1);
    assert_true(ec_last_error()[0] != '\0');
    assert_int_equal(ec_topology_node_of_path(NULL, "/"), -1);

    ec_topology_free(t);
    ect_rmtree(dir);
    free(dir);
}

static void test_node_of_pci_unknown(void **state)
{
    static const char *const bad[] = {
        "", "zz", "0000:3b:00", "0000:3b:00.0x", "0000:3b:20.0", "0000:3b:00.8",
        " 0000:3b:00.0", "+3b:00.0", "0x3b:00.0", "000000000:3b:00.0", "0000:3b::00.0",
        "0000:3b:0.0", "0000:3b:000.0", "0000-3b-00.0",
    };
    ec_topology *t = NULL;
    (void)state;

    assert_int_equal(ec_topology_load(&t), 0);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ec_clearerr();
        if (ec_topology_node_of_pci(t, bad[i]) != -1)
            fail_msg("bus id '%s' was accepted", bad[i]);
        assert_msg_contains("malformed PCI bus id");
    }
    /* Well-formed, absent (function 7 of the last device of bus ff). */
    ec_clearerr();
    assert_int_equal(ec_topology_node_of_pci(t, "ffff:ff:1f.7"), -1);
    assert_msg_contains("no PCI device ffff:ff:1f.7");
    assert_int_equal(ec_topology_node_of_pci(t, NULL), -1);
    ec_topology_free(t);
}

struct bind_arg {
    const ec_topology *t;
    int node;
    int rc;
    int cpu;
    unsigned long work;
};

static void *bind_thread_main(void *p)
{
    struct bind_arg *a = p;
    volatile unsigned long x = 0;

    a->rc = ec_topology_bind_thread(a->t, a->node);
    for (unsigned long i = 0; i < 1000000; i++)
        x += i;
    sched_yield();
    a->work = x;
    a->cpu = sched_getcpu();
    return NULL;
}

static void test_bind_thread(void **state)
{
    ec_topology *t = NULL;
    (void)state;

    assert_int_equal(ec_topology_load(&t), 0);
    for (int node = -1; node <= 0; node++) {
        struct bind_arg a = {t, node, 1, -2, 0};
        pthread_t th;

        assert_int_equal(pthread_create(&th, NULL, bind_thread_main, &a), 0);
        assert_int_equal(pthread_join(th, NULL), 0);
        if (a.rc != 0)
            fail_msg("bind_thread(%d): %s: %s", node, ec_strerror(a.rc), ec_last_error());
        assert_int_equal(a.work, 999999ul * 1000000ul / 2);
        assert_true(a.cpu >= 0);
    }
    assert_int_equal(ec_topology_bind_thread(NULL, 0), EC_EINVAL);
    ec_topology_free(t);
}

static void test_bind_memory(void **state)
{
    const size_t len = 4u << 20;
    ec_topology *t = NULL;
    unsigned char *p;
    (void)state;

    assert_int_equal(ec_topology_load(&t), 0);
    p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);

    assert_int_equal(ec_topology_bind_memory(t, p, len, -1), 0);
    {
        int rc = ec_topology_bind_memory(t, p, len, 0);
        if (rc == EC_EPERM) {
            /* The kernel (a seccomp profile) refused mbind: documented. */
            printf("# bind_memory(node 0): %s\n", ec_last_error());
            assert_msg_contains("refused");
        } else if (rc != 0) {
            fail_msg("bind_memory(node 0): %s: %s", ec_strerror(rc), ec_last_error());
        }
    }
    /* The pages are still ordinary memory. */
    memset(p, 0xa5, len);
    assert_int_equal(p[len - 1], 0xa5);
    assert_int_equal(ec_topology_bind_memory(t, p, 0, 0), 0);
    assert_int_equal(ec_topology_bind_memory(t, NULL, len, 0), EC_EINVAL);
    assert_int_equal(ec_topology_bind_memory(NULL, p, len, 0), EC_EINVAL);
    assert_int_equal(munmap(p, len), 0);
    ec_topology_free(t);
}

static void test_describe(void **state)
{
    ec_topology *t = NULL;
    char buf[EC_TOPOLOGY_DESC_MAX], full[EC_TOPOLOGY_DESC_MAX];
    char tiny[16];
    char *dir = ect_tmpdir("topo");
    int rc;
    (void)state;

    assert_int_equal(ec_topology_load(&t), 0);
    rc = ec_topology_describe(t, dir, buf, sizeof(buf));
    if (rc != 0)
        fail_msg("describe: %s: %s", ec_strerror(rc), ec_last_error());
    printf("# this machine: %s\n", buf);
    assert_true(buf[0] != '\0');
    assert_non_null(strstr(buf, "NUMA"));
    assert_non_null(strstr(buf, "data dir on"));
    assert_true(strlen(buf) < sizeof(buf));
    assert_null(strstr(buf, dir)); /* names no path */
    assert_null(strchr(buf, '\n'));

    /* A data dir on no disk, and one that is missing. */
    if (access("/dev/shm", F_OK) == 0) {
        assert_int_equal(ec_topology_describe(t, "/dev/shm", full, sizeof(full)), 0);
        assert_non_null(strstr(full, "; data dir on no block device (node ?)"));
    }
    {
        char missing[512];
        snprintf(missing, sizeof(missing), "%s/missing", dir);
        assert_int_equal(ec_topology_describe(t, missing, full, sizeof(full)), 0);
        assert_non_null(strstr(full, "; data dir missing (node ?)"));
    }

    /* Without a data dir. */
    assert_int_equal(ec_topology_describe(t, NULL, full, sizeof(full)), 0);
    assert_null(strstr(full, "data dir"));
    assert_int_equal(strncmp(full, buf, strlen(full)), 0);

    /* Cut to 8 bytes: a NUL-terminated prefix, nothing written past it. */
    memset(tiny, 'Z', sizeof(tiny));
    rc = ec_topology_describe(t, dir, tiny, 8);
    assert_int_equal(rc, EC_ETOOBIG);
    assert_msg_contains("needs");
    assert_int_equal(strlen(tiny), 7);
    assert_int_equal(strncmp(tiny, buf, 7), 0);
    for (size_t i = 8; i < sizeof(tiny); i++)
        assert_int_equal(tiny[i], 'Z');
    memset(tiny, 'Z', sizeof(tiny));
    rc = ec_topology_describe(t, NULL, tiny, 1);
    assert_int_equal(rc, EC_ETOOBIG);
    assert_int_equal(tiny[0], '\0');
    assert_int_equal(tiny[1], 'Z');

    /* Exactly the size it needs fits; one less does not. */
    {
        size_t need = strlen(full) + 1;
        char *exact = malloc(need);
        assert_non_null(exact);
        assert_int_equal(ec_topology_describe(t, NULL, exact, need), 0);
        assert_string_equal(exact, full);
        assert_int_equal(ec_topology_describe(t, NULL, exact, need - 1), EC_ETOOBIG);
        free(exact);
    }

    assert_int_equal(ec_topology_describe(t, NULL, NULL, 8), EC_EINVAL);
    assert_int_equal(ec_topology_describe(t, NULL, buf, 0), EC_EINVAL);
    assert_int_equal(ec_topology_describe(NULL, NULL, buf, sizeof(buf)), EC_EINVAL);
    ec_topology_free(t);
    ect_rmtree(dir);
    free(dir);
}

/* ------------------------------------------------------------------ */
/* The two-node machine from XML                                       */

static void test_xml_load(void **state)
{
    static const char junk[] = "<topology><object type=\"Nonsense\"";
    ec_topology *t = NULL;
    (void)state;

    t = load_two_node();
    assert_int_equal(ec_topology_numa_nodes(t), 2);
    ec_topology_free(t);

    t = NULL;
    assert_int_equal(ec_topology_load_xml(junk, sizeof(junk) - 1, &t), EC_EFORMAT);
    assert_null(t);
    assert_msg_contains("XML");
    assert_int_equal(ec_topology_load_xml(junk, 0, &t), EC_EINVAL);
    assert_int_equal(ec_topology_load_xml(NULL, 10, &t), EC_EINVAL);
    assert_int_equal(ec_topology_load_xml(junk, sizeof(junk) - 1, NULL), EC_EINVAL);
}

static void test_xml_node_of_pci(void **state)
{
    ec_topology *t = load_two_node();
    (void)state;

    assert_int_equal(ec_topology_node_of_pci(t, "0000:3b:00.0"), 1);  /* GPU */
    assert_int_equal(ec_topology_node_of_pci(t, "00000000:3B:00.0"), 1); /* NVML */
    assert_int_equal(ec_topology_node_of_pci(t, "3b:00.0"), 1);
    assert_int_equal(ec_topology_node_of_pci(t, "0000:01:00.0"), 0);  /* NVMe */
    ec_clearerr();
    assert_int_equal(ec_topology_node_of_pci(t, "0000:80:02.0"), -1); /* whole machine */
    assert_msg_contains("unknown");
    ec_clearerr();
    assert_int_equal(ec_topology_node_of_pci(t, "0000:3b:00.1"), -1);
    assert_msg_contains("no PCI device");
    ec_topology_free(t);
}

static void test_xml_node_of_path(void **state)
{
    ec_topology *t = load_two_node();
    int node;
    (void)state;

    /* This machine's disk is not in the XML machine, and an XML topology
     * never reads this machine's /sys: unknown, with a reason. */
    ec_clearerr();
    node = ec_topology_node_of_path(t, "/");
    assert_int_equal(node, -1);
    assert_true(ec_last_error()[0] != '\0');
    ec_topology_free(t);
}

static void test_xml_bind(void **state)
{
    ec_topology *t = load_two_node();
    const size_t len = 1u << 20;
    struct bind_arg a;
    pthread_t th;
    void *p;
    (void)state;

    /* Valid nodes: arguments checked, then hwloc's no-op for another system. */
    for (int node = -1; node <= 1; node++) {
        a = (struct bind_arg){t, node, 1, -2, 0};
        assert_int_equal(pthread_create(&th, NULL, bind_thread_main, &a), 0);
        assert_int_equal(pthread_join(th, NULL), 0);
        if (a.rc != 0)
            fail_msg("bind_thread(%d): %s: %s", node, ec_strerror(a.rc), ec_last_error());
    }
    ec_clearerr();
    assert_int_equal(ec_topology_bind_thread(t, 7), EC_EINVAL);
    assert_msg_contains("no NUMA node 7");

    p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    for (int node = -1; node <= 1; node++) {
        int rc = ec_topology_bind_memory(t, p, len, node);
        if (rc != 0)
            fail_msg("bind_memory(%d): %s: %s", node, ec_strerror(rc), ec_last_error());
    }
    ec_clearerr();
    assert_int_equal(ec_topology_bind_memory(t, p, len, 2), EC_EINVAL);
    assert_msg_contains("no NUMA node 2 (this machine has 2 node(s))");
    memset(p, 1, len);
    assert_int_equal(munmap(p, len), 0);
    ec_topology_free(t);
}

static void test_xml_describe(void **state)
{
    ec_topology *t = load_two_node();
    char buf[EC_TOPOLOGY_DESC_MAX];
    int rc;
    (void)state;

    rc = ec_topology_describe(t, NULL, buf, sizeof(buf));
    if (rc != 0)
        fail_msg("describe: %s: %s", ec_strerror(rc), ec_last_error());
    printf("# two-node XML machine: %s\n", buf);
    assert_non_null(strstr(buf, "2 package(s), 2 NUMA node(s), 4 core(s), 4 PU(s)"));
    /* The NVIDIA 3D controller counts; the other vendor's VGA does not. */
    assert_non_null(strstr(buf, "; 1 GPU(s): 0000:3b:00.0 (node 1)"));
    assert_non_null(strstr(buf, "nvme0n1 (node 0)"));
    assert_non_null(strstr(buf, "vdb (node ?)"));
    assert_non_null(strstr(buf, "; block: "));

    rc = ec_topology_describe(t, "/", buf, sizeof(buf));
    assert_int_equal(rc, 0);
    assert_non_null(strstr(buf, "; data dir on "));
    assert_non_null(strstr(buf, "(node ?)"));
    ec_topology_free(t);
}

/* Concurrent read-only use of one handle, as the header promises. */
static void *hammer(void *p)
{
    const ec_topology *t = p;
    char buf[EC_TOPOLOGY_DESC_MAX];
    intptr_t bad = 0;

    for (int i = 0; i < 500; i++) {
        bad += ec_topology_node_of_pci(t, "0000:3b:00.0") != 1;
        bad += ec_topology_node_of_pci(t, "0000:01:00.0") != 0;
        bad += ec_topology_describe(t, NULL, buf, sizeof(buf)) != 0;
        bad += strstr(buf, "0000:3b:00.0 (node 1)") == NULL;
    }
    return (void *)bad;
}

static void test_xml_concurrent(void **state)
{
    ec_topology *t = load_two_node();
    pthread_t th[4];
    (void)state;

    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, hammer, t), 0);
    for (int i = 0; i < 4; i++) {
        void *bad;
        assert_int_equal(pthread_join(th[i], &bad), 0);
        assert_int_equal((intptr_t)bad, 0);
    }
    ec_topology_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_free),
        cmocka_unit_test(test_node_of_path),
        cmocka_unit_test(test_node_of_pci_unknown),
        cmocka_unit_test(test_bind_thread),
        cmocka_unit_test(test_bind_memory),
        cmocka_unit_test(test_describe),
        cmocka_unit_test(test_xml_load),
        cmocka_unit_test(test_xml_node_of_pci),
        cmocka_unit_test(test_xml_node_of_path),
        cmocka_unit_test(test_xml_bind),
        cmocka_unit_test(test_xml_describe),
        cmocka_unit_test(test_xml_concurrent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
