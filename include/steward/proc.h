/* What the process knows about its own memory: its resident set and the limit it runs
 * under (the container's cgroup memory limit when one is set, else physical memory).
 * Read from /proc and /sys on Linux; each reader answers -1 when the figure is unknown. */
#ifndef STEWARD_PROC_H
#define STEWARD_PROC_H

#include <stdint.h>

/* Resident set size of this process in bytes (/proc/self/statm), or -1. */
int64_t proc_rss_bytes(void);

/* The cgroup memory limit in bytes (cgroup v2 memory.max, else v1
 * memory.limit_in_bytes), or -1 when none is set ("max", or v1's "unlimited" value at or
 * above physical memory) or it cannot be read. */
int64_t proc_cgroup_limit_bytes(void);

/* Physical memory in bytes (sysconf), or -1. */
int64_t proc_physical_bytes(void);

/* The limit memory pressure is measured against: the cgroup limit when set, else
 * physical memory; *source (may be NULL) is "cgroup" or "physical". -1 when neither is
 * known. */
int64_t proc_memory_limit_bytes(const char **source);

#endif
