/*
 * One cgroup per container on two cgroup-v1 hierarchies the agent mounts under /run/hc/cgroup (never visible in
 * a container): devices (runc's default allow-list, so a node a container makes cannot be opened) and memory
 * (the container's own limit if the host gives one, else only the VM's size; its oom_kill counter tells a guest
 * OOM kill from any other SIGKILL).
 */
#ifndef HC_CGROUP_H
#define HC_CGROUP_H

#include "util.h"

#define CGROUP_ROOT "/run/hc/cgroup"

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

/* The devices.allow lines for a container, ending with NULL (for tests). */
extern const char *const cg_default_devices[];

#endif
