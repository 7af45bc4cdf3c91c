/*
 * What a container may do inside the VM: its capability sets and no_new_privs, the /proc and /sys paths it
 * may not read or write (runc's defaults), and the small parsers the agent uses to watch it (signal masks
 * from /proc/PID/status, the OOM-kill counter of its memory cgroup).
 */
#ifndef HC_SECURITY_H
#define HC_SECURITY_H

#include <stdint.h>

#include "util.h"

/*
 * runc's and docker's default set: CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID, SETPCAP,
 * NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP (CapBnd 00000000a80425fb).
 */
#define CAPS_DEFAULT 0xa80425fbULL
#define CAPS_ALL (~0ULL)

struct cap_spec {
	uint64_t bounding, effective, permitted, inheritable, ambient;
	int no_new_privs;
};

/* The default for a container: CAPS_DEFAULT in bounding, effective and permitted; nothing inheritable. */
void caps_default(struct cap_spec *c, int privileged);

/*
 * In the child, as root, before it changes uid: drops what is not in the bounding set and keeps the
 * permitted set across the uid change (PR_SET_KEEPCAPS). caps_apply() then, after setuid, sets effective,
 * permitted, inheritable and ambient, and no_new_privs. The order is runc's.
 */
int caps_bound(const struct cap_spec *c, struct err *e);
int caps_apply(const struct cap_spec *c, struct err *e);

/* In the child, after pivot_root: runc's masked and read-only paths; /sys stays read-only. */
int mask_paths(struct err *e);

/* A signal's default action: 't' terminates (or dumps core), 's' stops, 'i' is ignored. */
char sig_default_action(int sig);
/* The hex mask after "KEY:" in /proc/PID/status text (SigCgt, SigIgn, CapEff, ...); 0 if absent. */
uint64_t status_mask(const char *status, const char *key);
/* "oom_kill N" in memory.oom_control text; 0 if absent. */
unsigned long long oom_kill_count(const char *oom_control);

#endif
