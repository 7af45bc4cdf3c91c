/* Starting a process: in a new container (own mount namespace on a root), in an existing one, or bare. */
#ifndef HC_SPAWN_H
#define HC_SPAWN_H

#include <sys/types.h>

#include "builtin.h"
#include "proto.h" /* enum mount_flag */
#include "security.h"
#include "util.h"

#define MAX_MOUNTS 64

/* A volume bind-mounted into a new container: source in the guest, target inside the container root. */
struct mount_spec {
	const char *src;
	const char *dst;
	unsigned flags;
};

#define MAX_RLIMITS 16

struct rlimit_spec {
	int resource;
	unsigned long long soft, hard;
};

struct proc_spec {
	const char *rootfs; /* new container on this root; NULL: no new root */
	int join_mntns;     /* >= 0: join this mount namespace (exec into a container) */
	int new_pidns;      /* 1: the process is PID 1 of a new PID namespace */
	int join_pidns;     /* >= 0: the process starts in this PID namespace */
	const char *cgroup; /* the container whose cgroups it joins (cgroup.h); NULL: none */
	int apply_caps;     /* 1: caps below, else the agent's (tests without a root) */
	struct cap_spec caps;
	int privileged;     /* all devices, /sys writable */
	const char *const *masked;   /* with rootfs: paths to mask, NULL-terminated */
	const char *const *ro_paths; /* with rootfs: paths to make read-only, NULL-terminated */
	const struct seccomp_filter *seccomp; /* NULL: none */
	int readonly;
	char **argv;
	builtin_fn builtin; /* non-NULL: run this builtin (argv[0] names it) where it would exec argv */
	char **envp;
	const char *cwd;
	uid_t uid;
	gid_t gid;
	gid_t *groups;
	size_t ngroups;
	int terminal;
	unsigned short rows, cols; /* with terminal: the pty's size before the process starts (0: none given) */
	int want_stdin;
	const struct mount_spec *mounts;
	size_t nmounts;
	struct rlimit_spec rlimits[MAX_RLIMITS];
	size_t nrlimits;
};

/* "nofile:1024:2048" (-1: unlimited) into *out; -1 with *e if malformed. */
int parse_rlimit(const char *text, struct rlimit_spec *out, struct err *e);

/* Agent-side ends; with a terminal, out is the pty master and in == out, err == -1. */
struct proc_io {
	int in, out, err;
};

/*
 * With s->rootfs, *mntns and *pidns receive fds of the new container's mount and PID namespaces (for later
 * EXECs). The pid is the agent's view of it (the guest's initial PID namespace).
 */
int spawn_process(const struct proc_spec *s, pid_t *pid, struct proc_io *io, int *mntns, int *pidns,
		  int *held, struct err *e);

/*
 * held non-NULL (a container's first process, with s->rootfs): the process stops once it is set up (namespaces,
 * cgroup, mounts, root, rlimits, working directory, capabilities, user, the file to exec found) and before the
 * rest (a seccomp filter that goes in last, with no_new_privs, and the exec); *held gets the fd that
 * spawn_release() takes to let it go on (-1 if it did not stop: no root).
 */
int spawn_release(int held, struct err *e);

/*
 * A PID namespace for containers that share one (a pod's shareProcessNamespace): its PID 1 is a pause
 * process that only reaps, runs as nobody without capabilities in an empty root, holds no agent fd.
 */
int spawn_pause(pid_t *pid, int *pidns, struct err *e);
/* The pause process's life (the agent binary run as argv[0] "pause"): reap, never return. */
void pause_loop(void) __attribute__((noreturn));

#endif
