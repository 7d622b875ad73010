#include "steward/proc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int64_t proc_rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return -1;
    long long size = 0, resident = -1;
    int n = fscanf(f, "%lld %lld", &size, &resident);
    fclose(f);
    long page = sysconf(_SC_PAGESIZE);
    if (n != 2 || resident < 0 || page <= 0)
        return -1;
    return (int64_t)resident * page;
}

int64_t proc_physical_bytes(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0)
        return -1;
    return (int64_t)pages * page;
}

/* The first line of path as a byte count; -2 for "max", -1 when unreadable. */
static int64_t read_limit(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[64] = "";
    char *ok = fgets(line, sizeof(line), f);
    fclose(f);
    if (!ok)
        return -1;
    if (strncmp(line, "max", 3) == 0)
        return -2;
    char *end;
    long long v = strtoll(line, &end, 10);
    if (end == line || v <= 0)
        return -1;
    return (int64_t)v;
}

int64_t proc_cgroup_limit_bytes(void)
{
    int64_t v = read_limit("/sys/fs/cgroup/memory.max");
    if (v == -1)
        v = read_limit("/sys/fs/cgroup/memory/memory.limit_in_bytes");
    if (v < 0)
        return -1;
    /* cgroup v1 writes a huge number for "no limit" */
    int64_t phys = proc_physical_bytes();
    if (phys > 0 && v >= phys)
        return -1;
    return v;
}

int64_t proc_memory_limit_bytes(const char **source)
{
    int64_t v = proc_cgroup_limit_bytes();
    if (v > 0) {
        if (source)
            *source = "cgroup";
        return v;
    }
    v = proc_physical_bytes();
    if (source)
        *source = v > 0 ? "physical" : NULL;
    return v;
}
