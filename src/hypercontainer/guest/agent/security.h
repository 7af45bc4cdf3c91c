/*
 * What a container may do inside the VM: its capability sets and no_new_privs, its seccomp filter, the paths it
 * may not read or write (runc's defaults, or the host's lists), and the small parsers the agent uses to watch it
 * (signal masks from /proc/PID/status, the OOM-kill counter of its memory cgroup).
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

/* runc's defaults, NULL-terminated: masked (/dev/null or an empty tmpfs over them) and read-only paths. */
extern const char *const default_masked_paths[];
extern const char *const default_readonly_paths[];
#define MAX_PATHS 256 /* entries of masked_paths / readonly_paths */

/* 1 if `p` is a container path the host may name: absolute, no empty, "." or ".." component, not "/". */
int container_path_ok(const char *p);

/*
 * In the child, after pivot_root: bind the read-only paths read-only (keeping their nosuid/nodev/noexec), then
 * mask the masked ones (runc's order). Both lists NULL-terminated (NULL: none); paths that do not exist are
 * skipped.
 */
int mask_paths(const char *const *masked, const char *const *readonly, struct err *e);

/*
 * A container's seccomp filter: a classic BPF program (struct sock_filter[len], 8 bytes each, in the guest's
 * byte order), loaded with seccomp(2) SECCOMP_SET_MODE_FILTER and `flags`.
 */
#define SECCOMP_MAX_INSNS 4096		      /* the kernel's BPF_MAXINSNS */
#define SECCOMP_FLAG_LOG 2u		      /* SECCOMP_FILTER_FLAG_LOG */
#define SECCOMP_FLAG_SPEC_ALLOW 4u	      /* SECCOMP_FILTER_FLAG_SPEC_ALLOW */
struct seccomp_filter {
	uint8_t *insns; /* malloc'd; NULL: no filter */
	size_t len;	/* instructions */
	unsigned flags;
};
/* The `seccomp` field (base64, padded) and `seccomp_flags` into *f; -1 with *e (EINVAL) if malformed. */
int seccomp_parse(const char *b64, uint64_t flags, struct seccomp_filter *f, struct err *e);
void seccomp_free(struct seccomp_filter *f);
/* In the child: installs the filter. Without no_new_privs this needs CAP_SYS_ADMIN (spawn.c's order). */
int seccomp_install(const struct seccomp_filter *f, struct err *e);

/* A signal's default action: 't' terminates (or dumps core), 's' stops, 'i' is ignored. */
char sig_default_action(int sig);
/* The hex mask after "KEY:" in /proc/PID/status text (SigCgt, SigIgn, CapEff, ...); 0 if absent. */
uint64_t status_mask(const char *status, const char *key);
/* "oom_kill N" in memory.oom_control text; 0 if absent. */
unsigned long long oom_kill_count(const char *oom_control);

#endif
