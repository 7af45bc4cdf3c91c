/*
 * Process start. The child reports a setup failure through a close-on-exec pipe as a struct err, so the host
 * gets "exec nosuchcmd: No such file or directory" instead of a silent exit code.
 */
#define _GNU_SOURCE
#include "spawn.h"

#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <pty.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cgroup.h"

extern char **environ;

static const char *DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

static int mount_at(struct err *e, const char *src, const char *root, const char *dir, const char *type,
		    unsigned long flags, const char *data)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", root, dir);
	if (mkdir_p(path, 0755) < 0)
		return fail_errno(e, "mkdir %s", path);
	if (mount(src, path, type, flags, data) < 0)
		return fail_errno(e, "mount %s on %s", type ? type : src, path);
	return 0;
}

/* A privileged container gets the guest's device nodes too (copies: the agent's /dev stays its own). */
static int copy_guest_devices(struct err *e, const char *root)
{
	DIR *d = opendir("/dev");
	struct dirent *de;
	char src[300], dst[4096];
	struct stat st;
	if (!d)
		return fail_errno(e, "opendir /dev");
	while ((de = readdir(d))) {
		snprintf(src, sizeof(src), "/dev/%s", de->d_name);
		if (lstat(src, &st) < 0 || !(S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) ||
		    strcmp(de->d_name, "ptmx") == 0) /* ours: a link to pts/ptmx */
			continue;
		snprintf(dst, sizeof(dst), "%s/dev/%s", root, de->d_name);
		if (mknod(dst, st.st_mode, st.st_rdev) < 0 && errno != EEXIST) {
			closedir(d);
			return fail_errno(e, "mknod %s", dst);
		}
	}
	closedir(d);
	return 0;
}

static int make_dev(struct err *e, const char *root, int privileged)
{
	static const struct {
		const char *name;
		unsigned maj, min;
	} nodes[] = {{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9},
		     {"tty", 5, 0}};
	static const char *links[][2] = {{"pts/ptmx", "ptmx"}, {"/proc/self/fd", "fd"},
					 {"/proc/self/fd/0", "stdin"}, {"/proc/self/fd/1", "stdout"},
					 {"/proc/self/fd/2", "stderr"}};
	char path[4096];

	if (mount_at(e, "tmpfs", root, "dev", "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k") < 0)
		return -1;
	for (size_t i = 0; i < sizeof(nodes) / sizeof(nodes[0]); i++) {
		snprintf(path, sizeof(path), "%s/dev/%s", root, nodes[i].name);
		if (mknod(path, S_IFCHR | 0666, makedev(nodes[i].maj, nodes[i].min)) < 0)
			return fail_errno(e, "mknod %s", path);
		chmod(path, 0666);
	}
	if (privileged && copy_guest_devices(e, root) < 0)
		return -1;
	/*
	 * The pod's one devpts (the agent opens terminals there before the container exists), so a container's
	 * tty keeps its /dev/pts/N name. Containers of a pod share it.
	 */
	if (mount_at(e, "/dev/pts", root, "dev/pts", NULL, MS_BIND, NULL) < 0)
		return -1;
	if (mount_at(e, "shm", root, "dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777") < 0)
		return -1;
	for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
		snprintf(path, sizeof(path), "%s/dev/%s", root, links[i][1]);
		if (symlink(links[i][0], path) < 0)
			return fail_errno(e, "symlink %s", path);
	}
	return 0;
}

static int mount_volumes(struct err *e, const char *root, const struct mount_spec *m, size_t n)
{
	char dst[4096];
	for (size_t i = 0; i < n; i++) {
		snprintf(dst, sizeof(dst), "%s%s", root, m[i].dst);
		if (mount(m[i].src, dst, NULL, MS_BIND | MS_REC, NULL) < 0)
			return fail_errno(e, "mount volume %s on %s", m[i].src, m[i].dst);
		if (m[i].flags & MOUNT_READONLY &&
		    mount(NULL, dst, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
			return fail_errno(e, "make volume %s read-only", m[i].dst);
	}
	return 0;
}

/*
 * In the child: a new mount namespace whose root is s->rootfs, with its volumes, a /proc of its PID namespace
 * (the child is in it already), /sys read-only unless privileged, its masked and read-only paths.
 */
static int enter_new_root(struct err *e, const struct proc_spec *s)
{
	const char *root = s->rootfs;
	int privileged = s->privileged;
	if (unshare(CLONE_NEWNS) < 0) {
		fail_errno(e, "unshare mount namespace");
		return in_phase(e, PHASE_NAMESPACE);
	}
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		return fail_errno(e, "make / private");
	if (mount(root, root, NULL, MS_BIND | MS_REC, NULL) < 0)
		return fail_errno(e, "bind %s", root);
	if (mount_volumes(e, root, s->mounts, s->nmounts) < 0)
		return -1;
	if (mount_at(e, "proc", root, "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		return -1;
	if (mount_at(e, "sysfs", root, "sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | (privileged ? 0 : MS_RDONLY),
		     NULL) < 0)
		return -1;
	if (make_dev(e, root, privileged) < 0)
		return -1;
	if (chdir(root) < 0)
		return fail_errno(e, "chdir %s", root);
	if (syscall(SYS_pivot_root, ".", ".") < 0)
		return fail_errno(e, "pivot_root %s", root);
	if (umount2(".", MNT_DETACH) < 0)
		return fail_errno(e, "detach old root");
	if (chdir("/") < 0)
		return fail_errno(e, "chdir /");
	if (mask_paths(s->masked, s->ro_paths, e) < 0)
		return -1;
	if (s->readonly && mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) < 0)
		return fail_errno(e, "remount / read-only");
	return 0;
}

/* The child tells the parent 'N' once it is set up (all but a last seccomp filter and the exec) and waits for 'G';
 * 'E' + struct err on failure. */
static int child_setup(struct err *e, const struct proc_spec *s, int sync_fd)
{
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	for (int sig = 1; sig < NSIG; sig++)
		signal(sig, SIG_DFL);

	if (s->cgroup && cg_join(s->cgroup, e) < 0)
		return in_phase(e, PHASE_CGROUP);
	if (s->rootfs && enter_new_root(e, s) < 0)
		return in_phase(e, PHASE_MOUNT);
	if (s->join_mntns >= 0) {
		e->phase = PHASE_NAMESPACE;
		if (setns(s->join_mntns, CLONE_NEWNS) < 0)
			return fail_errno(e, "join the container's mount namespace");
		if (chdir("/") < 0)
			return fail_errno(e, "chdir /");
	}
	e->phase = PHASE_RLIMIT;
	for (size_t i = 0; i < s->nrlimits; i++) {
		struct rlimit rl = {.rlim_cur = s->rlimits[i].soft, .rlim_max = s->rlimits[i].hard};
		if (setrlimit(s->rlimits[i].resource, &rl) < 0)
			return fail_errno(e, "setrlimit %d", s->rlimits[i].resource);
	}
	e->phase = PHASE_CHDIR;
	if (s->cwd && *s->cwd && chdir(s->cwd) < 0)
		return fail_errno(e, "chdir to working directory %s", s->cwd);
	/*
	 * The seccomp filter in runc's place: without no_new_privs loading one needs CAP_SYS_ADMIN, so it goes in
	 * before the capabilities are dropped (and the steps after it must be allowed by it); with no_new_privs
	 * (set by caps_apply) it goes in last, just before exec, so the filter sees as few of our calls as possible.
	 */
	int nnp = s->apply_caps && s->caps.no_new_privs;
	e->phase = PHASE_SECCOMP;
	if (s->seccomp && !nnp && seccomp_install(s->seccomp, e) < 0)
		return -1;
	e->phase = PHASE_CAPABILITIES;
	if (s->apply_caps && caps_bound(&s->caps, e) < 0)
		return -1;
	e->phase = PHASE_USER;
	if (setgroups(s->ngroups, s->groups) < 0)
		return fail_errno(e, "setgroups");
	if (setgid(s->gid) < 0)
		return fail_errno(e, "setgid %u", (unsigned)s->gid);
	if (setuid(s->uid) < 0)
		return fail_errno(e, "setuid %u", (unsigned)s->uid);
	e->phase = PHASE_CAPABILITIES;
	if (s->apply_caps && caps_apply(&s->caps, e) < 0)
		return -1;
	environ = s->envp;
	if (!getenv("PATH"))
		setenv("PATH", DEFAULT_PATH, 1);
	/*
	 * Set up, the file to exec found: the agent opens its namespaces and (NEW_CONTAINER with hold) lets it go on
	 * only at START. As in runc, where `start` only releases an exec fifo, what is left after the release is the
	 * seccomp filter that comes last and the exec: START is quick (a PATH search over a 9p share is a round trip
	 * to the host per entry), and the steps that can fail have failed before.
	 */
	e->phase = PHASE_EXEC;
	char exe[4096];
	int found = s->builtin ? 0 : find_executable(s->argv[0], getenv("PATH"), exe, sizeof(exe));
	if (found < 0)
		return fail_errno(e, "exec %s", s->argv[0]);
	if (s->rootfs) {
		char go = 0;
		if (write_full(sync_fd, "N", 1) < 0 || read(sync_fd, &go, 1) != 1 || go != 'G') {
			fail(e, EPIPE, "agent went away during container setup");
			return in_phase(e, PHASE_SPAWN);
		}
	}
	e->phase = PHASE_SECCOMP;
	if (s->seccomp && nnp && seccomp_install(s->seccomp, e) < 0)
		return -1;
	e->phase = PHASE_EXEC;
	if (s->builtin) /* closes sync_fd with the rest: the agent sees the start as an exec's */
		builtin_run(s->builtin, s->argv);
	if (found)
		execv(exe, s->argv);
	else
		execvp(s->argv[0], s->argv);
	return fail_errno(e, "exec %s", s->argv[0]);
}

static void close_pair(int p[2])
{
	for (int i = 0; i < 2; i++)
		if (p[i] >= 0)
			close(p[i]);
}

int parse_rlimit(const char *text, struct rlimit_spec *out, struct err *e)
{
	static const struct {
		const char *name;
		int resource;
	} names[] = {{"as", RLIMIT_AS}, {"core", RLIMIT_CORE}, {"cpu", RLIMIT_CPU}, {"data", RLIMIT_DATA},
		     {"fsize", RLIMIT_FSIZE}, {"locks", RLIMIT_LOCKS}, {"memlock", RLIMIT_MEMLOCK},
		     {"msgqueue", RLIMIT_MSGQUEUE}, {"nice", RLIMIT_NICE}, {"nofile", RLIMIT_NOFILE},
		     {"nproc", RLIMIT_NPROC}, {"rss", RLIMIT_RSS}, {"rtprio", RLIMIT_RTPRIO},
		     {"rttime", RLIMIT_RTTIME}, {"sigpending", RLIMIT_SIGPENDING}, {"stack", RLIMIT_STACK}};
	char name[32];
	long long soft, hard;
	if (sscanf(text, "%31[a-z]:%lld:%lld", name, &soft, &hard) != 3 || soft < -1 || hard < -1)
		return fail(e, EINVAL, "malformed rlimit \"%s\"", text);
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(names[i].name, name) == 0) {
			out->resource = names[i].resource;
			out->soft = soft < 0 ? RLIM_INFINITY : (unsigned long long)soft;
			out->hard = hard < 0 ? RLIM_INFINITY : (unsigned long long)hard;
			return 0;
		}
	return fail(e, EINVAL, "unknown rlimit %s", name);
}

/* Parent side of the sync channel: 0 once the child exec'd, 1 once it is set up (hold: not told to go on), -1
 * with *e on its failure. */
static int await_child(int fd, pid_t pid, int *mntns, int *pidns, int hold, struct err *e)
{
	for (;;) {
		char tag = 0;
		ssize_t n = read(fd, &tag, 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n == 0)
			return 0; /* exec closed the channel */
		if (n == 1 && tag == 'N') {
			char path[64];
			snprintf(path, sizeof(path), "/proc/%d/ns/mnt", (int)pid);
			if (mntns)
				*mntns = open(path, O_RDONLY | O_CLOEXEC);
			snprintf(path, sizeof(path), "/proc/%d/ns/pid", (int)pid);
			if (pidns)
				*pidns = open(path, O_RDONLY | O_CLOEXEC);
			if (hold)
				return 1;
			(void)write_full(fd, "G", 1);
			continue;
		}
		struct err ce;
		if (n == 1 && tag == 'E' && read(fd, &ce, sizeof(ce)) == (ssize_t)sizeof(ce)) {
			*e = ce;
			e->msg[sizeof(e->msg) - 1] = 0;
		} else {
			fail(e, EIO, "container setup failed");
			e->phase = PHASE_SPAWN;
		}
		if (mntns && *mntns >= 0)
			close(*mntns), *mntns = -1;
		if (pidns && *pidns >= 0)
			close(*pidns), *pidns = -1;
		return -1;
	}
}

/*
 * fork() into a new PID namespace (new_pidns) or an existing one (join_pidns >= 0): the agent changes the
 * namespace of its next child, forks, and changes it back to its own at once.
 */
static pid_t fork_in_pidns(int new_pidns, int join_pidns, struct err *e)
{
	static int own = -1;
	if (!new_pidns && join_pidns < 0)
		return fork();
	if (own < 0 && (own = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC)) < 0) {
		fail_errno(e, "open the agent's PID namespace");
		return in_phase(e, PHASE_NAMESPACE);
	}
	if (new_pidns ? unshare(CLONE_NEWPID) < 0 : setns(join_pidns, CLONE_NEWPID) < 0) {
		fail_errno(e, new_pidns ? "new PID namespace" : "join the container's PID namespace");
		return in_phase(e, PHASE_NAMESPACE);
	}
	pid_t pid = fork();
	if (pid < 0)
		fail_errno(e, "fork"), in_phase(e, PHASE_SPAWN);
	if (pid != 0 && setns(own, CLONE_NEWPID) < 0)
		log_msg("cannot return to the agent's PID namespace: %s", strerror(errno));
	return pid;
}

static void on_sigchld(int sig)
{
	(void)sig; /* only there to interrupt sigsuspend */
}

/*
 * The pause process, before it becomes one: no agent fd, an empty root, nobody without capabilities, then a
 * fresh image of the agent binary (argv[0] "pause": pause_loop()), so no copy of the agent's memory remains.
 */
static void pause_main(void)
{
	static char *const argv[] = {"pause", NULL}, *const envp[] = {NULL};
	int exe = open("/proc/self/exe", O_RDONLY);
	for (int fd = 0; fd < 1024; fd++)
		if (fd != exe)
			close(fd);
	int null = open("/dev/null", O_RDWR);
	if (null >= 0)
		dup2(null, 0), dup2(null, 1), dup2(null, 2);
	if (null > 2)
		close(null);
	fcntl(exe, F_SETFD, FD_CLOEXEC);
	setsid();
	mkdir_p("/run/hc/empty", 0);
	if (exe < 0 || chroot("/run/hc/empty") < 0 || chdir("/") < 0)
		_exit(1);
	struct cap_spec nothing = {.no_new_privs = 1};
	if (setgroups(0, NULL) < 0 || caps_bound(&nothing, &(struct err){0}) < 0 || setgid(65534) < 0 ||
	    setuid(65534) < 0 || caps_apply(&nothing, &(struct err){0}) < 0)
		_exit(1);
	fexecve(exe, argv, envp);
	_exit(1);
}

void pause_loop(void)
{
	sigset_t chld, none;
	prctl(PR_SET_NAME, "pause", 0, 0, 0);
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);
	sigemptyset(&none);
	signal(SIGCHLD, on_sigchld);
	for (;;) {
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		sigsuspend(&none);
	}
}

int spawn_pause(pid_t *pidp, int *pidns, struct err *e)
{
	char path[64];
	pid_t pid = fork_in_pidns(1, -1, e);
	if (pid < 0)
		return -1;
	if (pid == 0)
		pause_main();
	snprintf(path, sizeof(path), "/proc/%d/ns/pid", (int)pid);
	if ((*pidns = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
		fail_errno(e, "open %s", path);
		kill(pid, SIGKILL);
		return -1;
	}
	*pidp = pid;
	return 0;
}

int spawn_release(int held, struct err *e)
{
	int rc = write_full(held, "G", 1) < 0 ? fail_errno(e, "release the container's process")
					       : await_child(held, 0, NULL, NULL, 0, e);
	close(held);
	return rc;
}

int spawn_process(const struct proc_spec *s, pid_t *pidp, struct proc_io *io, int *mntns, int *pidns,
		  int *held, struct err *e)
{
	int errp[2] = {-1, -1}, in[2] = {-1, -1}, out[2] = {-1, -1}, errs[2] = {-1, -1};
	int master = -1, slave = -1;

	if (mntns)
		*mntns = -1;
	if (pidns)
		*pidns = -1;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, errp) < 0)
		return fail_errno(e, "socketpair");
	if (s->terminal) {
		struct winsize ws = {.ws_row = s->rows, .ws_col = s->cols};
		if (openpty(&master, &slave, NULL, NULL, s->rows && s->cols ? &ws : NULL) < 0) {
			close_pair(errp);
			return fail_errno(e, "openpty");
		}
		fcntl(master, F_SETFD, FD_CLOEXEC);
		fcntl(slave, F_SETFD, FD_CLOEXEC);
	} else {
		int ok = pipe2(out, O_CLOEXEC) == 0 && pipe2(errs, O_CLOEXEC) == 0;
		if (ok && s->want_stdin)
			ok = pipe2(in, O_CLOEXEC) == 0;
		else if (ok)
			ok = (in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;
		if (!ok) {
			fail_errno(e, "pipe");
			close_pair(errp), close_pair(in), close_pair(out), close_pair(errs);
			return -1;
		}
	}

	pid_t pid = fork_in_pidns(s->new_pidns, s->join_pidns, e);
	if (pid < 0) {
		close_pair(errp), close_pair(in), close_pair(out), close_pair(errs);
		if (master >= 0)
			close(master), close(slave);
		return -1;
	}
	if (pid == 0) {
		struct err ce = {0};
		close(errp[0]);
		setsid();
		if (s->terminal) {
			ioctl(slave, TIOCSCTTY, 0);
			dup2(slave, 0), dup2(slave, 1), dup2(slave, 2);
		} else {
			dup2(in[0], 0), dup2(out[1], 1), dup2(errs[1], 2);
		}
		child_setup(&ce, s, errp[1]);
		(void)write_full(errp[1], "E", 1);
		(void)write_full(errp[1], &ce, sizeof(ce));
		_exit(127);
	}

	close(errp[1]);
	int got = await_child(errp[0], pid, mntns, pidns, held != NULL, e), failed = got < 0;
	if (held)
		*held = got == 1 ? errp[0] : -1;
	if (got != 1)
		close(errp[0]);
	if (s->terminal) {
		close(slave);
		io->in = io->out = master;
		io->err = -1;
	} else {
		close(in[0]), close(out[1]), close(errs[1]);
		io->in = s->want_stdin ? in[1] : -1;
		io->out = out[0];
		io->err = errs[0];
	}
	if (failed) {
		waitpid(pid, NULL, 0);
		if (s->terminal)
			close(master);
		else {
			if (io->in >= 0)
				close(io->in);
			close(io->out), close(io->err);
		}
		return -1;
	}
	*pidp = pid;
	return 0;
}
