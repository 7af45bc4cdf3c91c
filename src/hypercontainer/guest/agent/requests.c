/* The control requests: VERSION, START_POD, NEW_CONTAINER, START_CONTAINER, EXEC, SIGNAL, WINSIZE,
 * REMOVE_CONTAINER, STATS, CONTAINER_STATS, OPEN_PORT, SHUTDOWN. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "boot.h"
#include "cgroup.h"
#include "hostile.h"
#include "net.h"
#include "spawn.h"

/* The pod's shared PID namespace (shared_pid_ns containers), made with its pause process on first use. */
static int pod_pidns = -1;
static pid_t pause_pid;

/* Capability fields override what *c holds (the default, or the container's for an EXEC). */
static int read_caps(const struct msg *m, struct cap_spec *c)
{
	static const struct {
		uint16_t tag;
		size_t off;
	} sets[] = {{F_CAP_BOUNDING, offsetof(struct cap_spec, bounding)},
		    {F_CAP_EFFECTIVE, offsetof(struct cap_spec, effective)},
		    {F_CAP_PERMITTED, offsetof(struct cap_spec, permitted)},
		    {F_CAP_INHERITABLE, offsetof(struct cap_spec, inheritable)},
		    {F_CAP_AMBIENT, offsetof(struct cap_spec, ambient)}};
	int given = 0;
	for (size_t i = 0; i < sizeof(sets) / sizeof(sets[0]); i++)
		if (msg_get(m, sets[i].tag)) {
			*(uint64_t *)((char *)c + sets[i].off) = msg_u64(m, sets[i].tag, 0);
			given = 1;
		}
	if (msg_get(m, F_NO_NEW_PRIVS)) {
		c->no_new_privs = msg_u64(m, F_NO_NEW_PRIVS, 0) != 0;
		given = 1;
	}
	return given;
}

/*
 * masked_paths or readonly_paths into a NULL-terminated list (pointers into the message): the host's list if it
 * gave one (one empty entry: an empty list), else `dflt`.
 */
static int read_paths(const struct msg *m, uint16_t tag, const char *const *dflt, const char **out, struct err *e)
{
	size_t n = msg_count(m, tag), k = 0;
	const char *name = tag == F_MASKED_PATHS ? "masked_paths" : "readonly_paths";
	if (n == 0) {
		while (dflt && dflt[k] && k < MAX_PATHS)
			out[k] = dflt[k], k++;
	} else if (n > MAX_PATHS) {
		return fail(e, EINVAL, "%s: more than %d paths", name, MAX_PATHS);
	} else if (!(n == 1 && !*msg_nth(m, tag, 0)->str)) {
		for (; k < n; k++) {
			out[k] = msg_nth(m, tag, k)->str;
			if (!container_path_ok(out[k]))
				return fail(e, EINVAL, "%s: \"%s\" is not a clean absolute path", name, out[k]);
		}
	}
	out[k] = NULL;
	return 0;
}

static int shared_pidns(struct err *e)
{
	if (pod_pidns >= 0 && kill(pause_pid, 0) == 0)
		return pod_pidns;
	if (pod_pidns >= 0)
		close(pod_pidns), pod_pidns = -1;
	if (spawn_pause(&pause_pid, &pod_pidns, e) < 0)
		return -1;
	return pod_pidns;
}

static int valid_id(const char *id)
{
	size_t n = strlen(id);
	if (n == 0 || n > 64)
		return 0;
	for (const char *c = id; *c; c++)
		if (!(*c == '-' || *c == '_' || *c == '.' || (*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z') ||
		      (*c >= 'A' && *c <= 'Z')))
			return 0;
	return id[0] != '.';
}

/* A pod-wide tmpfs volume, mounted on first use at /run/hc/vols/NAME. */
static int tmpfs_volume(const char *name, char *path, size_t len, struct err *e)
{
	struct stat st, parent;
	if (!valid_id(name))
		return fail(e, EINVAL, "invalid volume name \"%s\"", name);
	snprintf(path, len, "%s/%s", VOLS_ROOT, name);
	if (mkdir_p(path, 0755) < 0)
		return fail_errno(e, "mkdir %s", path);
	if (stat(path, &st) == 0 && stat(VOLS_ROOT, &parent) == 0 && st.st_dev != parent.st_dev)
		return 0; /* already a mount */
	if (mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0)
		return fail_errno(e, "mount tmpfs volume %s", name);
	return 0;
}

/* The virtio disk whose serial is `serial` (/sys/block/vdX/serial), mounted once at /run/hc/blk/SERIAL. */
static int block_volume(const char *spec, char *path, size_t len, struct err *e)
{
	char serial[64], fstype[16], dev[300] = "", buf[64];
	struct stat st, parent;
	if (sscanf(spec, "%63[A-Za-z0-9_-]:%15[a-z0-9]", serial, fstype) != 2)
		return fail(e, EINVAL, "malformed block volume \"%s\"", spec);
	snprintf(path, len, "%s/%s", BLK_ROOT, serial);
	if (mkdir_p(path, 0755) < 0)
		return fail_errno(e, "mkdir %s", path);
	if (stat(path, &st) == 0 && stat(BLK_ROOT, &parent) == 0 && st.st_dev != parent.st_dev)
		return 0; /* mounted for an earlier container */
	DIR *d = opendir("/sys/block");
	struct dirent *de;
	while (d && (de = readdir(d)) && !*dev) {
		char p[300];
		if (strncmp(de->d_name, "vd", 2) != 0)
			continue;
		snprintf(p, sizeof(p), "/sys/block/%s/serial", de->d_name);
		if (read_line(p, buf, sizeof(buf)) <= 0)
			continue;
		if (strcmp(buf, serial) == 0)
			snprintf(dev, sizeof(dev), "/dev/%s", de->d_name);
	}
	if (d)
		closedir(d);
	if (!*dev)
		return fail(e, ENODEV, "no virtio disk with serial %s", serial);
	if (mount(dev, path, fstype, MS_NOSUID | MS_NODEV, NULL) < 0)
		return fail_errno(e, "mount %s (%s) for block volume %s", dev, fstype, serial);
	return 0;
}

static int prepare_mounts(const struct msg *m, struct mount_spec *out, char (*srcs)[PATH_MAX], size_t *n,
			  struct err *e)
{
	size_t count = msg_count(m, F_MOUNT_SRC);
	if (count != msg_count(m, F_MOUNT_DST) || count != msg_count(m, F_MOUNT_FLAGS))
		return fail(e, EINVAL, "mount_src, mount_dst and mount_flags differ in count");
	if (count > MAX_MOUNTS)
		return fail(e, EINVAL, "too many volume mounts");
	for (size_t i = 0; i < count; i++) {
		const char *src = msg_nth(m, F_MOUNT_SRC, i)->str, *dst = msg_nth(m, F_MOUNT_DST, i)->str;
		unsigned flags = (unsigned)msg_nth(m, F_MOUNT_FLAGS, i)->u64;
		if (dst[0] != '/' || !path_is_clean_relative(dst + 1))
			return fail(e, EINVAL, "mount point %s is not a clean absolute path", dst);
		if (flags & ~(unsigned)MOUNT_ALL || (flags & MOUNT_TMPFS && flags & MOUNT_BLOCK))
			return fail(e, EINVAL, "invalid mount flags %u for %s", flags, dst);
		if (flags & MOUNT_TMPFS) {
			if (tmpfs_volume(src, srcs[i], PATH_MAX, e) < 0)
				return in_phase(e, PHASE_MOUNT);
		} else if (flags & MOUNT_BLOCK) {
			if (block_volume(src, srcs[i], PATH_MAX, e) < 0)
				return in_phase(e, PHASE_MOUNT);
		} else {
			if (!path_is_clean_relative(src))
				return fail(e, EINVAL, "volume source %s is not a clean relative path", src);
			snprintf(srcs[i], PATH_MAX, "%s/%s", share_root, src);
		}
		out[i] = (struct mount_spec){.src = srcs[i], .dst = dst, .flags = flags};
	}
	*n = count;
	return 0;
}

/* "net.core.somaxconn=512" -> /proc/sys/net/core/somaxconn (the guest's; containers share it). */
static int apply_sysctls(const struct msg *m, struct err *e)
{
	for (size_t i = 0; i < msg_count(m, F_SYSCTL); i++) {
		const char *kv = msg_nth(m, F_SYSCTL, i)->str, *eq = strchr(kv, '=');
		char path[512] = "/proc/sys/";
		size_t n = eq ? (size_t)(eq - kv) : 0;
		if (!n || n > 400)
			return fail(e, EINVAL, "malformed sysctl \"%s\"", kv);
		for (size_t j = 0; j < n; j++) {
			char ch = kv[j];
			if (!(ch == '.' || ch == '_' || ch == '-' || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
			      (ch >= '0' && ch <= '9')) || (ch == '.' && (j == 0 || kv[j - 1] == '.')))
				return fail(e, EINVAL, "malformed sysctl name in \"%s\"", kv);
			path[10 + j] = ch == '.' ? '/' : ch;
		}
		path[10 + n] = 0;
		int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
		if (fd < 0)
			return fail_errno(e, "sysctl %.*s", (int)n, kv);
		int rc = write_full(fd, eq + 1, strlen(eq + 1));
		close(fd);
		if (rc < 0)
			return fail_errno(e, "sysctl %.*s", (int)n, kv);
	}
	return 0;
}

/* A free process slot for a new stream (even, non-zero, not in use); NULL with *e. */
static struct proc *new_slot(uint64_t stream, struct err *e)
{
	if (stream == 0 || stream % 2 || stream == UINT64_MAX)
		return fail(e, EINVAL, "stream id must be even and non-zero"), NULL;
	if (proc_by_stream(stream))
		return fail(e, EEXIST, "stream %llu is in use", (unsigned long long)stream), NULL;
	for (int i = 0; i < MAX_PROCS; i++)
		if (!procs[i].used)
			return &procs[i];
	return fail(e, EAGAIN, "too many processes"), NULL;
}

static int start_process(const struct msg *m, struct container *c, int new_container, struct err *e)
{
	size_t nargs = msg_count(m, F_ARG), nenv = msg_count(m, F_ENV), ngroups = msg_count(m, F_GROUP);
	uint64_t stream = msg_u64(m, F_STREAM, 0);
	char root[PATH_MAX];
	struct proc *slot = NULL;
	const char *cgroup_made = NULL;
	int rc = -1;

	if (nargs == 0)
		return fail(e, EINVAL, "no command given");
	if (ngroups > 64)
		return fail(e, EINVAL, "too many supplementary groups");
	if (!(slot = new_slot(stream, e)))
		return -1;

	char **argv = calloc(nargs + 1, sizeof(char *)), **envp = calloc(nenv + 1, sizeof(char *));
	gid_t groups[64];
	static const char *masked[MAX_PATHS + 1], *ro_paths[MAX_PATHS + 1];
	struct seccomp_filter filter = {0};
	if (!argv || !envp) {
		fail(e, ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < nargs; i++)
		argv[i] = msg_nth(m, F_ARG, i)->str;
	for (size_t i = 0; i < nenv; i++)
		envp[i] = msg_nth(m, F_ENV, i)->str;
	for (size_t i = 0; i < ngroups; i++)
		groups[i] = (gid_t)msg_nth(m, F_GROUP, i)->u64;

	struct proc_spec s = {
		.rootfs = NULL, .join_mntns = -1, .join_pidns = -1, .readonly = (int)msg_u64(m, F_READONLY, 0),
		.argv = argv, .envp = envp, .cwd = msg_str(m, F_CWD, "/"),
		.uid = (uid_t)msg_u64(m, F_UID, 0), .gid = (gid_t)msg_u64(m, F_GID, 0),
		.groups = groups, .ngroups = ngroups,
		.terminal = msg_u64(m, F_TERMINAL, 0) != 0, .want_stdin = msg_u64(m, F_STDIN, 0) != 0,
		.rows = (unsigned short)msg_u64(m, F_ROWS, 0), .cols = (unsigned short)msg_u64(m, F_COLS, 0),
	};
	if (msg_u64(m, F_BUILTIN, 0) > 1) {
		fail(e, EINVAL, "builtin must be 0 or 1");
		goto out;
	}
	if (msg_u64(m, F_HOLD, 0) > 1 || (!new_container && msg_get(m, F_HOLD))) { /* before any step */
		fail(e, EINVAL, new_container ? "hold must be 0 or 1" : "hold is for NEW_CONTAINER only");
		goto out;
	}
	if (msg_u64(m, F_BUILTIN, 0) && !(s.builtin = builtin_find(argv[0]))) {
		fail(e, EINVAL, "unknown builtin \"%s\"", argv[0]);
		goto out;
	}
	if (s.cwd[0] != '/') {
		fail(e, EINVAL, "working directory %s is not absolute", s.cwd);
		goto out;
	}
	if (new_container) {
		s.privileged = msg_u64(m, F_PRIVILEGED, 0) != 0;
		caps_default(&s.caps, s.privileged);
		s.apply_caps = read_caps(m, &s.caps) || !test_mode || *msg_str(m, F_ROOTFS, "");
		if (read_paths(m, F_MASKED_PATHS, s.privileged ? NULL : default_masked_paths, masked, e) < 0 ||
		    read_paths(m, F_READONLY_PATHS, s.privileged ? NULL : default_readonly_paths, ro_paths, e) < 0)
			goto out;
		s.masked = masked, s.ro_paths = ro_paths;
	} else {
		s.caps = c->caps;
		s.apply_caps = read_caps(m, &s.caps) || c->apply_caps;
		s.join_pidns = c->pidns;
		if (!test_mode)
			s.cgroup = c->id;
	}
	/* The container's filter (an EXEC's own if it gives one, else the container's). */
	if (msg_get(m, F_SECCOMP)) {
		if (seccomp_parse(msg_str(m, F_SECCOMP, ""), msg_u64(m, F_SECCOMP_FLAGS, 0), &filter, e) < 0)
			goto out;
		s.seccomp = &filter;
	} else if (msg_get(m, F_SECCOMP_FLAGS)) {
		fail(e, EINVAL, "seccomp_flags without seccomp");
		goto out;
	} else if (!new_container && c->seccomp.insns) {
		s.seccomp = &c->seccomp;
	}
	if (new_container) {
		const char *rel = msg_str(m, F_ROOTFS, "");
		if (*rel) {
			if (!path_is_clean_relative(rel)) {
				fail(e, EINVAL, "rootfs %s is not a clean relative path", rel);
				goto out;
			}
			snprintf(root, sizeof(root), "%s/%s", share_root, rel);
			s.rootfs = root;
		} else if (!test_mode) {
			fail(e, EINVAL, "rootfs missing");
			goto out;
		}
	} else {
		s.join_mntns = c->mntns;
	}

	struct mount_spec mounts[MAX_MOUNTS];
	char mount_src[MAX_MOUNTS][PATH_MAX];
	if (new_container && prepare_mounts(m, mounts, mount_src, &s.nmounts, e) < 0)
		goto out;
	if (msg_count(m, F_RLIMIT) > MAX_RLIMITS) {
		fail(e, EINVAL, "too many rlimits");
		goto out;
	}
	for (size_t i = 0; i < msg_count(m, F_RLIMIT); i++)
		if (parse_rlimit(msg_nth(m, F_RLIMIT, i)->str, &s.rlimits[s.nrlimits++], e) < 0)
			goto out;
	if (new_container && !test_mode && apply_sysctls(m, e) < 0) {
		in_phase(e, PHASE_SYSCTL);
		goto out;
	}
	s.mounts = mounts;
	const char *of = new_container ? msg_str(m, F_PID_NS_OF, NULL) : NULL;
	if (of) { /* CRI: a sandbox's container in the sandbox's PID namespace */
		struct container *owner = container_by_id(of);
		struct proc *init = owner ? proc_by_stream(owner->init_stream) : NULL;
		if (!owner || owner->pidns < 0 || !init || init->exited) {
			fail(e, ESRCH, "no running container %s whose PID namespace to join", of);
			in_phase(e, PHASE_NAMESPACE);
			goto out;
		}
		s.join_pidns = owner->pidns;
	} else if (new_container && msg_u64(m, F_SHARED_PID_NS, 0)) {
		if ((s.join_pidns = shared_pidns(e)) < 0) {
			in_phase(e, PHASE_NAMESPACE);
			goto out;
		}
	} else if (new_container) {
		s.new_pidns = !test_mode || s.rootfs; /* tests without a root run on the host's PIDs */
	}
	const char *id = msg_str(m, F_ID, "");
	if (new_container && !test_mode) {
		cgroup_made = id;
		if (cg_create(id, s.privileged, msg_u64(m, F_MEMORY_LIMIT, 0), e) < 0) {
			in_phase(e, PHASE_CGROUP);
			goto out;
		}
		s.cgroup = id;
	}

	struct proc_io io;
	pid_t pid;
	int mntns = -1, pidns = -1, held = -1, hold = new_container && msg_u64(m, F_HOLD, 0);
	if (spawn_process(&s, &pid, &io, new_container ? &mntns : NULL, new_container ? &pidns : NULL,
			  hold ? &held : NULL, e) < 0) {
		in_phase(e, PHASE_SPAWN);
		goto out;
	}
	memset(slot, 0, sizeof(*slot));
	slot->used = 1;
	slot->pid = pid;
	slot->stream = stream;
	slot->in = io.in, slot->out = io.out, slot->err = io.err;
	slot->terminal = s.terminal;
	slot->ns_init = s.new_pidns;
	slot->container_init = new_container;
	slot->held = held + 1;
	snprintf(slot->container, sizeof(slot->container), "%s", new_container ? msg_str(m, F_ID, "") : c->id);
	if (s.cgroup) {
		snprintf(slot->cgroup, sizeof(slot->cgroup), "%s", s.cgroup);
		slot->oom_base = cg_oom_kills(s.cgroup);
	}
	set_nonblock(io.out, 1);
	if (io.err >= 0)
		set_nonblock(io.err, 1);
	if (io.in >= 0)
		set_nonblock(io.in, 1);
	if (new_container) {
		c->mntns = mntns;
		c->pidns = pidns; /* its own, the pod's or its sandbox's: the one the process started in */
		c->caps = s.caps;
		c->apply_caps = s.apply_caps;
		c->seccomp = filter; /* the container's now: its EXECs get it */
		filter = (struct seccomp_filter){0};
	}
	rc = 0;
	frame_begin(&out, MSG_ACK, m->seq);
	frame_add_u64(&out, F_PID, (uint64_t)pid);
out:
	if (rc < 0 && cgroup_made) /* a failed start leaves no cgroup either (empty: its child is gone) */
		cg_remove(cgroup_made);
	seccomp_free(&filter);
	free(argv);
	free(envp);
	return rc;
}

static int handle_start_pod(const struct msg *m, struct err *e)
{
	static struct net_config net;
	const char *host = msg_str(m, F_HOSTNAME, NULL), *share = msg_str(m, F_SHARE, NULL);
	const char *seed = msg_str(m, F_SEED, NULL);
	unsigned long long clock = msg_u64(m, F_CLOCK_NS, 0);
	if (net_read(&net, m, e) < 0) /* all checked first; in test mode too (the host's tests see what is refused) */
		return -1;
	if (test_mode)
		return 0;
	if (clock && set_clock_ns(clock, e) < 0)
		return -1;
	if (seed && reseed_random(seed, e) < 0)
		return -1;
	if (host && sethostname(host, strlen(host)) < 0)
		return fail_errno(e, "sethostname %s", host);
	if (share && mount_share(share, msg_str(m, F_SHAREFS, "virtiofs"), SHARE_ROOT, e) < 0)
		return -1;
	if (net.nifs && net_apply(&net, 2000, e) < 0)
		return -1;
	return 0;
}

static int handle_new_container(const struct msg *m, struct err *e)
{
	const char *id = msg_str(m, F_ID, "");
	struct container *c = NULL;
	if (!valid_id(id))
		return fail(e, EINVAL, "invalid container id \"%s\"", id);
	if (msg_get(m, F_BUILTIN))
		return fail(e, EINVAL, "builtin is for EXEC only");
	if ((c = container_by_id(id))) {
		struct proc *init = proc_by_stream(c->init_stream);
		if (init && !init->exited)
			return fail(e, EEXIST, "container %s is running", id);
		if (c->mntns >= 0) /* a restart: the old namespaces go */
			close(c->mntns);
		if (c->pidns >= 0)
			close(c->pidns);
		seccomp_free(&c->seccomp);
		c->used = 0;
		c = NULL;
	}
	for (int i = 0; i < MAX_CONTAINERS && !c; i++)
		if (!containers[i].used)
			c = &containers[i];
	if (!c)
		return fail(e, EAGAIN, "too many containers");
	memset(c, 0, sizeof(*c));
	c->mntns = c->pidns = -1;
	if (start_process(m, c, 1, e) < 0)
		return -1;
	c->used = 1;
	c->init_stream = msg_u64(m, F_STREAM, 0);
	snprintf(c->id, sizeof(c->id), "%s", id);
	return 0;
}

/* A held container's first process goes on to its exec (NEW_CONTAINER with hold). */
static int handle_start_container(const struct msg *m, struct err *e)
{
	const char *id = msg_str(m, F_ID, "");
	struct container *c = container_by_id(id);
	struct proc *init = c ? proc_by_stream(c->init_stream) : NULL;
	if (!c)
		return fail(e, ENOENT, "no container %s", id);
	if (!init || init->exited || !init->held)
		return fail(e, EINVAL, "container %s is not waiting to start", id);
	int held = init->held - 1;
	init->held = 0;
	if (spawn_release(held, e) < 0)
		return -1; /* it exits 127: EXITED follows */
	frame_begin(&out, MSG_ACK, m->seq);
	frame_add_u64(&out, F_PID, (uint64_t)init->pid);
	return 0;
}

/*
 * Frees the container's slot, its namespaces (the agent's fds were all that kept them once its processes are
 * gone) and its cgroups. Its first process must have exited; processes it EXECed that outlive it (possible only
 * in a PID namespace it does not own) are killed and reported as usual.
 */
static int handle_remove_container(const struct msg *m, struct err *e)
{
	const char *id = msg_str(m, F_ID, "");
	struct container *c = container_by_id(id);
	if (!c)
		return fail(e, ENOENT, "no container %s", id);
	struct proc *init = proc_by_stream(c->init_stream);
	if (init && !init->exited)
		return fail(e, EBUSY, "container %s is running: stop it first", id);
	for (int i = 0; i < MAX_PROCS; i++)
		if (procs[i].used && !procs[i].exited && strcmp(procs[i].container, id) == 0)
			kill(procs[i].pid, SIGKILL);
	if (c->mntns >= 0)
		close(c->mntns);
	if (c->pidns >= 0)
		close(c->pidns);
	if (!test_mode)
		cg_remove(id); /* fails while a killed process is still in it: retried when the last one is reaped */
	seccomp_free(&c->seccomp);
	memset(c, 0, sizeof(*c));
	c->mntns = c->pidns = -1;
	return 0;
}

/* Open fds of the agent: a leak of namespaces or pipes shows here. */
static uint64_t count_fds(void)
{
	uint64_t n = 0;
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	while (d && (de = readdir(d)))
		n += de->d_name[0] != '.';
	if (d)
		closedir(d);
	return n ? n - 1 : 0; /* not the one opendir holds */
}

static void handle_stats(void)
{
	uint64_t ncontainers = 0, nprocs = 0;
	for (int i = 0; i < MAX_CONTAINERS; i++)
		ncontainers += containers[i].used != 0;
	for (int i = 0; i < MAX_PROCS; i++)
		nprocs += procs[i].used != 0;
	frame_add_u64(&out, F_CONTAINERS, ncontainers);
	frame_add_u64(&out, F_PROCESSES, nprocs);
	frame_add_u64(&out, F_FDS, count_fds());
}

/* A running container's counters: its cgroups' CPU time, memory and processes (cgroup.c). */
static int handle_container_stats(const struct msg *m, struct err *e)
{
	const char *id = msg_str(m, F_ID, "");
	struct container *c = container_by_id(id);
	struct proc *init = c ? proc_by_stream(c->init_stream) : NULL;
	struct cg_stats s;
	if (!c)
		return fail(e, ENOENT, "no container %s", id);
	if (!init || init->exited)
		return fail(e, ESRCH, "container %s is not running", id);
	if (cg_stats(id, &s, e) < 0)
		return -1;
	frame_add_u64(&out, F_CPU_NS, s.cpu_ns);
	frame_add_u64(&out, F_MEM_USAGE, s.mem_usage);
	frame_add_u64(&out, F_MEM_WORKING_SET, s.mem_working_set);
	frame_add_u64(&out, F_MEM_RSS, s.mem_rss);
	frame_add_u64(&out, F_PIDS, s.pids);
	if (s.mem_limit)
		frame_add_u64(&out, F_MEMORY_LIMIT, s.mem_limit);
	return 0;
}

/*
 * A TCP connection from the guest (the pod's network: its containers share the VM's) to its localhost:port,
 * relayed on `stream` like a process's stdio: a process slot with the socket as stdin and stdout.
 */
static int handle_open_port(const struct msg *m, struct err *e)
{
	uint64_t port = msg_u64(m, F_PORT, 0);
	struct proc *slot;
	if (port == 0 || port > 65535)
		return fail(e, EINVAL, "invalid port %llu", (unsigned long long)port);
	if (!(slot = new_slot(msg_u64(m, F_STREAM, 0), e)))
		return -1;
	int fd = net_dial_local((unsigned)port, 1000, e);
	if (fd < 0)
		return -1;
	memset(slot, 0, sizeof(*slot));
	slot->used = slot->relay = 1;
	slot->stream = msg_u64(m, F_STREAM, 0);
	slot->in = slot->out = fd;
	slot->err = -1;
	return 0;
}

static int handle_exec(const struct msg *m, struct err *e)
{
	struct container *c = container_by_id(msg_str(m, F_ID, ""));
	if (!c)
		return fail(e, ENOENT, "no container %s", msg_str(m, F_ID, ""));
	if (c->mntns < 0 && !test_mode)
		return fail(e, ESRCH, "container %s has no namespace to join", c->id);
	return start_process(m, c, 0, e);
}

/*
 * A container's first process is PID 1 of its PID namespace, and the kernel drops a signal sent to such a
 * process from outside unless it has a handler for it. The host's contract (kill -s TERM, stop, runv kill) is
 * the signal's ordinary effect, so the agent delivers the default action itself: SIGKILL for one that
 * terminates (the exit is then reported as 128+N), SIGSTOP for one that stops. Returns the signal to send.
 */
static int init_signal(struct proc *p, int sig)
{
	char path[64], status[4096];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)p->pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return sig;
	ssize_t n = read(fd, status, sizeof(status) - 1);
	close(fd);
	status[n > 0 ? n : 0] = 0;
	uint64_t bit = 1ULL << (sig - 1);
	if ((status_mask(status, "SigCgt") | status_mask(status, "SigIgn")) & bit || sig == SIGKILL)
		return sig; /* its handler runs, or it ignores the signal as it asked */
	switch (sig_default_action(sig)) {
	case 't':
		p->emulated_sig = sig;
		return SIGKILL;
	case 's':
		return SIGSTOP;
	default:
		return sig;
	}
}

static int handle_signal(const struct msg *m, struct err *e)
{
	struct proc *p = proc_by_stream(msg_u64(m, F_STREAM, 0));
	uint64_t sig = msg_u64(m, F_SIGNAL, 0);
	if (sig == 0 || sig >= NSIG)
		return fail(e, EINVAL, "invalid signal %llu", (unsigned long long)sig);
	if (!p || p->exited)
		return fail(e, ESRCH, "no such process");
	if (p->relay) { /* any signal ends a relay: closed once the reply is out (its EXITED must follow it) */
		p->aborted = 1;
		return 0;
	}
	if (p->ns_init)
		sig = init_signal(p, (int)sig);
	if (kill(p->pid, (int)sig) < 0)
		return fail_errno(e, "kill %d", (int)p->pid);
	return 0;
}

static int handle_winsize(const struct msg *m, struct err *e)
{
	struct proc *p = proc_by_stream(msg_u64(m, F_STREAM, 0));
	struct winsize ws = {.ws_row = (unsigned short)msg_u64(m, F_ROWS, 24),
			     .ws_col = (unsigned short)msg_u64(m, F_COLS, 80)};
	if (!p || p->exited)
		return fail(e, ESRCH, "no such process");
	if (!p->terminal || p->out < 0)
		return fail(e, ENOTTY, "process has no terminal");
	if (ioctl(p->out, TIOCSWINSZ, &ws) < 0)
		return fail_errno(e, "set window size");
	return 0;
}

static uint64_t uptime_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void shutdown_now(void)
{
	if (test_mode)
		exit(0);
	kill(-1, SIGKILL);
	power_off();
}

void dispatch(const struct msg *m)
{
	struct err e = {0};
	int rc = 0, shutdown = 0;

#ifdef HC_HOSTILE
	if (negotiated && hostile_cue(m)) /* the test build: misbehaves on cue (hostile.c) */
		return;
#endif
	frame_begin(&out, MSG_ACK, m->seq);
	if (!negotiated && m->type != MSG_VERSION) {
		rc = fail(&e, EPROTO, "VERSION must be the first request");
	} else {
		switch (m->type) {
		case MSG_VERSION:
			if (msg_u64(m, F_VERSION, 0) != PROTO_VERSION) {
				rc = fail(&e, EPROTONOSUPPORT, "protocol version %llu not supported (agent speaks %d)",
					  (unsigned long long)msg_u64(m, F_VERSION, 0), PROTO_VERSION);
				break;
			}
			negotiated = 1;
			frame_add_u64(&out, F_VERSION, PROTO_VERSION);
			frame_add_str(&out, F_AGENT, AGENT_NAME);
			frame_add_u64(&out, F_UPTIME_MS, uptime_ms());
			break;
		case MSG_PING:
			break;
		case MSG_START_POD:
			rc = handle_start_pod(m, &e);
			break;
		case MSG_NEW_CONTAINER:
			rc = handle_new_container(m, &e);
			break;
		case MSG_EXEC:
			rc = handle_exec(m, &e);
			break;
		case MSG_SIGNAL:
			rc = handle_signal(m, &e);
			break;
		case MSG_WINSIZE:
			rc = handle_winsize(m, &e);
			break;
		case MSG_REMOVE_CONTAINER:
			rc = handle_remove_container(m, &e);
			break;
		case MSG_STATS:
			handle_stats();
			break;
		case MSG_CONTAINER_STATS:
			rc = handle_container_stats(m, &e);
			break;
		case MSG_OPEN_PORT:
			rc = handle_open_port(m, &e);
			break;
		case MSG_START_CONTAINER:
			rc = handle_start_container(m, &e);
			break;
		case MSG_SHUTDOWN:
			shutdown = 1;
			break;
		case MSG_ACK:
		case MSG_ERROR:
		case MSG_EXITED:
			rc = fail(&e, EINVAL, "message type %u is not a request", m->type);
			break;
		default:
			rc = fail(&e, ENOSYS, "unknown message type %u", m->type);
		}
	}
	if (rc < 0)
		send_error(m->seq, &e);
	else
		send_frame();
	if (shutdown)
		shutdown_now();
}

