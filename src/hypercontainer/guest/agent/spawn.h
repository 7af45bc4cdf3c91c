/* Starting a process: in a new container (own mount namespace on a root), in an existing one, or bare. */
#ifndef HC_SPAWN_H
#define HC_SPAWN_H

#include <sys/types.h>

#include "util.h"

#define MOUNT_READONLY 1
#define MOUNT_TMPFS 2
#define MOUNT_BLOCK 4
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
	int readonly;
	char **argv;
	char **envp;
	const char *cwd;
	uid_t uid;
	gid_t gid;
	gid_t *groups;
	size_t ngroups;
	int terminal;
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

/* With s->rootfs, *mntns receives an fd of the new container's mount namespace (for later EXECs). */
int spawn_process(const struct proc_spec *s, pid_t *pid, struct proc_io *io, int *mntns, struct err *e);

#endif
