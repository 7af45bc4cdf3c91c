/*
 * One cgroup per container on the cgroup-v1 hierarchies the agent mounts under /run/hc/cgroup (never visible in
 * a container): devices (runc's default allow-list, so a node a container makes cannot be opened), memory (the
 * container's own limit if the host gives one, else only the VM's size; its oom_kill counter tells a guest OOM
 * kill from any other SIGKILL) and, where the kernel has it, cpuacct (the container's CPU time).
 */
#ifndef HC_CGROUP_H
#define HC_CGROUP_H

#include "util.h"

#define CGROUP_ROOT "/run/hc/cgroup"

/* Where the hierarchies are: CGROUP_ROOT, or (hc-agent --test) a directory of the test's. */
extern const char *cg_root;

/* What a container's cgroups count (CONTAINER_STATS), as cAdvisor reads cgroup v1. */
struct cg_stats {
	unsigned long long cpu_ns;	    /* cpuacct.usage; without cpuacct, utime + stime of its processes now */
	unsigned long long mem_usage;	    /* memory.usage_in_bytes (page cache included) */
	unsigned long long mem_working_set; /* usage - total_inactive_file (0 if that is more) */
	unsigned long long mem_rss;	    /* memory.stat total_rss */
	unsigned long long mem_limit;	    /* memory.limit_in_bytes; 0: none of its own */
	unsigned long long pids;	    /* processes in its memory cgroup (cgroup.procs) */
};

/* Mounts the hierarchies at boot, so a VM template holds them mounted; cg_create() retries if this failed. */
void cg_boot(void);
/*
 * Mounts the hierarchies (once) and makes the container's cgroups with its device rules and its memory limit in
 * bytes (0: none; memory+swap gets the same where the kernel has it).
 */
int cg_create(const char *id, int privileged, unsigned long long memory_limit, struct err *e);
/* In a child of the agent: moves the calling process into the container's cgroups. */
int cg_join(const char *id, struct err *e);
/* OOM kills recorded for the container so far (0 if unknown). */
unsigned long long cg_oom_kills(const char *id);
/* Removes the container's cgroups if they are empty (else they stay for its next start). */
void cg_remove(const char *id);
/* Reads the container's counters; -1 with *e (ENOENT) when it has no memory cgroup. */
int cg_stats(const char *id, struct cg_stats *s, struct err *e);
/* The value of `key` in a "key value" per line text (memory.stat); 0 if absent. */
unsigned long long cg_stat_value(const char *text, const char *key);
/* utime + stime of a process in ns (/proc/PID/stat), 0 if it is gone. */
unsigned long long proc_cpu_ns(int pid);

/* The devices.allow lines for a container, ending with NULL (for tests). */
extern const char *const cg_default_devices[];

#endif
