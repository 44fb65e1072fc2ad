/*
 * topology.h - where the daemon's pager thread and shared segment live:
 * the machine's NUMA, core, GPU and NVMe layout as hwloc sees it.
 *
 * Owns one loaded hwloc topology (with I/O devices: PCI devices and the
 * block, network and GPU OS devices hwloc reports). The daemon's engine
 * loads it once at start-up, logs ec_topology_describe() (and serves the
 * same line in stats), finds the NUMA node closest to the data directory's
 * NVMe device (or, once the device tier exists, to the GPU it feeds), binds
 * the pager thread's CPUs to that node and the segment's memory to it
 * before the segment is first touched. On a one-node machine every bind is
 * a no-op returning 0; describe still reports what was found.
 *
 * Threads: ec_topology_load() and ec_topology_free() are called by one
 * thread (the engine's, at start-up and shut-down). In between the handle is
 * read-only, and every other function may be called from any thread
 * concurrently (hwloc allows concurrent read-only use of a loaded topology).
 * Errors are recorded in the calling thread's message (common/err.h).
 *
 * NUMA nodes are named by their OS index (the N of /sys/devices/system/node/
 * nodeN, of numactl and of nvidia-smi topo), -1 meaning "unknown".
 *
 * Nothing here aborts: an hwloc failure is an EC_E* code with a message,
 * and "which node is closest" questions answer -1 when the machine does not
 * say (tmpfs, overlayfs, a VM whose firmware reports no device locality).
 */
#ifndef EC_CORE_TOPOLOGY_H
#define EC_CORE_TOPOLOGY_H

#include <stddef.h>

#include "embcache.h"

/* Room for one describe() line with a few GPUs and disks. */
#define EC_TOPOLOGY_DESC_MAX 512

typedef struct ec_topology ec_topology;

/**
 * Discover this machine's topology, I/O devices included (hwloc type filter
 * KEEP_IMPORTANT for PCI and OS devices). Honours hwloc's own environment
 * (HWLOC_XMLFILE, HWLOC_FSROOT...), which makes it describe another machine.
 *
 * @param[out] out  the new handle, written only on success; free it with
 *                  ec_topology_free().
 * @return 0, or EC_EINVAL (out is NULL), EC_ENOMEM, EC_EIO (hwloc could not
 *         initialise or load the topology; the message carries errno).
 */
int ec_topology_load(ec_topology **out);

/**
 * Load a topology from an hwloc XML export (`lstopo --of xml`, or
 * hwloc_topology_export_xmlbuffer()) instead of this machine: for tests and
 * for reproducing a user's machine. Such a topology is "not this system":
 * binds validate their arguments and then do nothing, and node_of_path()
 * consults only the XML's block devices, never this machine's /sys.
 *
 * @param[in]  xml  the XML text; need not be NUL-terminated.
 * @param[in]  len  its length in bytes (1 .. INT_MAX - 2).
 * @param[out] out  the new handle, written only on success.
 * @return 0, or EC_EINVAL, EC_ENOMEM, EC_EFORMAT (hwloc rejected the XML).
 */
int ec_topology_load_xml(const char *xml, size_t len, ec_topology **out);

/** Release a handle and its hwloc topology. NULL is a no-op. */
void ec_topology_free(ec_topology *t);

/** Number of NUMA nodes (>= 1; hwloc reports one node on non-NUMA machines). */
unsigned ec_topology_numa_nodes(const ec_topology *t);

/**
 * NUMA node closest to the block device that holds `path`: a data
 * directory, a partition file, or a block device node (/dev/nvme0n1).
 * stat(path)'s device is resolved through /sys/dev/block/MAJ:MIN to its
 * whole disk (a partition to its parent; a device-mapper or md device to
 * the disks under it, which must all agree), then to a node by, in order:
 * hwloc's block OS device of that name, hwloc's PCI device named in the
 * disk's sysfs path, the numa_node file of the disk's sysfs ancestors. A
 * device found on a one-node machine is on that node.
 *
 * @return the node's OS index, or -1 when unknown, with a message saying
 *         why: path is NULL or cannot be stat'ed, it is on no block device
 *         (tmpfs, overlayfs, NFS, btrfs), the disks under a device-mapper
 *         device span nodes, or the firmware reports no locality (common in
 *         VMs). Never fails otherwise.
 */
int ec_topology_node_of_path(const ec_topology *t, const char *path);

/**
 * NUMA node of a PCI device (a GPU) given its bus id, "0000:3b:00.0" as
 * cudaDeviceGetPCIBusId() writes it ("00000000:3B:00.0" from NVML, or
 * "3b:00.0" with domain 0, are accepted too; hex digits in either case).
 *
 * @return the node's OS index, or -1 with a message when the bus id is
 *         malformed, no such device exists, or its locality is unknown.
 */
int ec_topology_node_of_pci(const ec_topology *t, const char *busid);

/**
 * Bind the calling thread's CPU affinity to the cores of `node` (those this
 * process may use). Call it from the thread to bind, e.g. first thing in
 * the pager thread.
 *
 * @param[in] node  an OS index from node_of_path()/node_of_pci(), or -1.
 * @return 0, also without doing anything when node < 0 or the machine has
 *         one node; or EC_EINVAL (t is NULL, no such node, or the node has
 *         no CPU this process may use: a memory-only node), EC_EPERM (the
 *         kernel refused), EC_EIO (binding unsupported; the message carries
 *         errno). On failure the thread's affinity is unchanged.
 */
int ec_topology_bind_thread(const ec_topology *t, int node);

/**
 * Bind the pages of [addr, addr + len) to `node` (mbind through hwloc,
 * HWLOC_MEMBIND_BIND without STRICT: on Linux hwloc asks for MPOL_PREFERRED,
 * so a full node spills to others instead of failing the allocation).
 * addr is rounded down and the end up to page boundaries.
 *
 * Only pages faulted in after the call are placed: call it right after
 * mmap() of the segment and before anything writes it. Pages already
 * resident (a warm restart re-attaching an old segment) stay where they are.
 * For a shared mapping of a POSIX shm object the policy is the object's, so
 * it holds for pages any process faults in through any mapping.
 *
 * @return 0, also without doing anything when len is 0, node < 0 or the
 *         machine has one node; or EC_EINVAL (t or addr NULL, no such
 *         node), EC_EPERM (mbind refused: a container's seccomp profile
 *         allows it only with CAP_SYS_NICE; the memory then stays with the
 *         kernel's first-touch placement, so callers should log and go on),
 *         EC_EIO (unsupported or failed; the message carries errno).
 */
int ec_topology_bind_memory(const ec_topology *t, void *addr, size_t len, int node);

/**
 * One line for the start-up log and for stats, e.g.
 *   "2 package(s), 2 NUMA node(s), 32 core(s), 64 PU(s); 1 GPU(s):
 *    0000:3b:00.0 (node 1); block: nvme0n1 (node 0); data dir on nvme0n1
 *    (node 0)"
 * (on one line): counts of packages, NUMA nodes, cores and PUs; the NVIDIA
 * GPUs (PCI class 0x0300/0x0302, vendor 0x10de) and block devices hwloc
 * found with their nodes ("node ?" when unknown; the first 8 of each, then
 * "+N more"); and the node of data_dir's device when data_dir is not NULL.
 * Names no path, so it may be shown to any client.
 *
 * @param[in]  data_dir  the daemon's data directory, or NULL.
 * @param[out] buf       receives a NUL-terminated line; on EC_ETOOBIG the
 *                       cut prefix that fit (len - 1 bytes).
 * @param[in]  len       size of buf; EC_TOPOLOGY_DESC_MAX fits most machines.
 * @return 0, or EC_EINVAL (t or buf NULL, len 0), EC_ETOOBIG (cut; the
 *         message says how many bytes the whole line needs).
 */
int ec_topology_describe(const ec_topology *t, const char *data_dir, char *buf, size_t len);

#endif
