/*
 * hc-agent: PID 1 of a hypercontainer VM. One poll loop serves the control port, the stream port, the pipes
 * of every process and a signalfd for SIGCHLD. Protocol: docs/protocol.md.
 *
 *   hc-agent                       as PID 1 in the guest
 *   hc-agent --test CTL IO [ROOT]  over two inherited fds, for host tests; ROOT stands in for the pod share
 *   hc-agent --tables              prints the message and field tables (checked against the host's)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include "boot.h"
#include "proto.h"
#include "spawn.h"
#include "util.h"

#define AGENT_NAME "hc-agent/1"
#define MAX_PROCS 1024
#define MAX_CONTAINERS 256
#define STDIN_HIGH_WATER (1024u * 1024u)
#define SHARE_ROOT "/run/hc/share"
#define VOLS_ROOT "/run/hc/vols"

struct proc {
	int used;
	pid_t pid;
	uint64_t stream;
	int in, out, err; /* agent ends, -1 when closed; terminal: in == out */
	int terminal;
	struct buf inbuf;
	size_t inoff;
	int in_eof;	   /* host closed stdin: close once inbuf is written */
	int exited, status;
};

struct container {
	int used;
	char id[65];
	int mntns;	      /* fd of the container's mount namespace, -1 if unknown */
	uint64_t init_stream; /* its first process: when that exits, the container may be started anew */
};

static struct proc procs[MAX_PROCS];
static struct container containers[MAX_CONTAINERS];
static int ctl_fd = -1, io_fd = -1, sig_fd = -1;
static int test_mode, negotiated, ctl_down, io_down;
static const char *share_root = SHARE_ROOT;
static struct reader ctl_rd, io_rd;
static struct buf out;

/* ---- sending ---------------------------------------------------------------------------------------- */

static void send_frame(void)
{
	frame_end(&out);
	if (write_full(ctl_fd, out.data, out.len) < 0)
		log_msg("control write: %s", strerror(errno));
}

static void send_error(uint32_t seq, const struct err *e)
{
	frame_begin(&out, MSG_ERROR, seq);
	frame_add_u64(&out, F_CODE, (uint64_t)(e->code > 0 ? e->code : EIO));
	frame_add_str(&out, F_MESSAGE, e->msg);
	send_frame();
}

static void send_io(uint64_t stream, const void *data, uint32_t len)
{
	uint8_t frame[IO_HDR + IO_MAX_DATA];
	io_header(frame, stream, len);
	memcpy(frame + IO_HDR, data, len);
	if (write_full(io_fd, frame, IO_HDR + len) < 0)
		log_msg("stream write: %s", strerror(errno));
}

/* ---- processes -------------------------------------------------------------------------------------- */

static struct proc *proc_by_stream(uint64_t stream)
{
	for (int i = 0; i < MAX_PROCS; i++)
		if (procs[i].used && procs[i].stream == stream)
			return &procs[i];
	return NULL;
}

static struct container *container_by_id(const char *id)
{
	for (int i = 0; i < MAX_CONTAINERS; i++)
		if (containers[i].used && strcmp(containers[i].id, id) == 0)
			return &containers[i];
	return NULL;
}

static void close_in(struct proc *p)
{
	if (p->in >= 0 && p->in != p->out)
		close(p->in);
	p->in = -1;
	buf_free(&p->inbuf);
	p->inoff = 0;
}

static void force_eof(struct proc *p, int *fdp, uint64_t stream)
{
	if (*fdp == p->in)
		p->in = -1;
	close(*fdp);
	*fdp = -1;
	send_io(stream, NULL, 0);
}

/* Reads one chunk of output. Returns 1 if data was sent, 0 at EOF (fd closed, EOF sent), -1 if none now. */
static int pump_output(struct proc *p, int *fdp, uint64_t stream)
{
	static uint8_t chunk[IO_MAX_DATA];
	ssize_t n = read(*fdp, chunk, sizeof(chunk));
	if (n > 0) {
		send_io(stream, chunk, (uint32_t)n);
		return 1;
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return -1;
	/* EOF, or EIO from a pty master whose slave side is gone. */
	force_eof(p, fdp, stream);
	return 0;
}

static void proc_finish_if_done(struct proc *p)
{
	if (!p->exited || p->out >= 0 || p->err >= 0)
		return;
	close_in(p);
	frame_begin(&out, MSG_EXITED, 0);
	frame_add_u64(&out, F_STREAM, p->stream);
	frame_add_u64(&out, F_STATUS, (uint64_t)p->status);
	send_frame();
	memset(p, 0, sizeof(*p));
	p->in = p->out = p->err = -1;
}

static void on_exit_status(struct proc *p, int wstatus)
{
	p->exited = 1;
	p->status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
	/* Everything the process wrote before it exited is in its pipes: flush it, then close. */
	while (p->out >= 0 && pump_output(p, &p->out, p->stream) == 1)
		;
	while (p->err >= 0 && pump_output(p, &p->err, p->stream + 1) == 1)
		;
	/* Still open: another process holds the write end. The container process is gone, so is its output. */
	if (p->out >= 0)
		force_eof(p, &p->out, p->stream);
	if (p->err >= 0)
		force_eof(p, &p->err, p->stream + 1);
	proc_finish_if_done(p);
}

static void reap(void)
{
	struct signalfd_siginfo si;
	while (read(sig_fd, &si, sizeof(si)) == sizeof(si))
		;
	for (;;) {
		int ws;
		pid_t pid = waitpid(-1, &ws, WNOHANG);
		if (pid <= 0)
			return;
		for (int i = 0; i < MAX_PROCS; i++)
			if (procs[i].used && !procs[i].exited && procs[i].pid == pid) {
				on_exit_status(&procs[i], ws);
				break;
			}
	}
}

/* ---- requests --------------------------------------------------------------------------------------- */

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
		if (flags & MOUNT_TMPFS) {
			if (tmpfs_volume(src, srcs[i], PATH_MAX, e) < 0)
				return -1;
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

static int start_process(const struct msg *m, struct container *c, int new_container, struct err *e)
{
	size_t nargs = msg_count(m, F_ARG), nenv = msg_count(m, F_ENV), ngroups = msg_count(m, F_GROUP);
	uint64_t stream = msg_u64(m, F_STREAM, 0);
	char root[PATH_MAX];
	struct proc *slot = NULL;
	int rc = -1;

	if (nargs == 0)
		return fail(e, EINVAL, "no command given");
	if (stream == 0 || stream % 2 || stream == UINT64_MAX)
		return fail(e, EINVAL, "stream id must be even and non-zero");
	if (proc_by_stream(stream))
		return fail(e, EEXIST, "stream %llu is in use", (unsigned long long)stream);
	if (ngroups > 64)
		return fail(e, EINVAL, "too many supplementary groups");
	for (int i = 0; i < MAX_PROCS && !slot; i++)
		if (!procs[i].used)
			slot = &procs[i];
	if (!slot)
		return fail(e, EAGAIN, "too many processes");

	char **argv = calloc(nargs + 1, sizeof(char *)), **envp = calloc(nenv + 1, sizeof(char *));
	gid_t groups[64];
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
		.rootfs = NULL, .join_mntns = -1, .readonly = (int)msg_u64(m, F_READONLY, 0),
		.argv = argv, .envp = envp, .cwd = msg_str(m, F_CWD, "/"),
		.uid = (uid_t)msg_u64(m, F_UID, 0), .gid = (gid_t)msg_u64(m, F_GID, 0),
		.groups = groups, .ngroups = ngroups,
		.terminal = msg_u64(m, F_TERMINAL, 0) != 0, .want_stdin = msg_u64(m, F_STDIN, 0) != 0,
	};
	if (s.cwd[0] != '/') {
		fail(e, EINVAL, "working directory %s is not absolute", s.cwd);
		goto out;
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
	s.mounts = mounts;

	struct proc_io io;
	pid_t pid;
	int mntns = -1;
	if (spawn_process(&s, &pid, &io, new_container ? &mntns : NULL, e) < 0)
		goto out;
	memset(slot, 0, sizeof(*slot));
	slot->used = 1;
	slot->pid = pid;
	slot->stream = stream;
	slot->in = io.in, slot->out = io.out, slot->err = io.err;
	slot->terminal = s.terminal;
	set_nonblock(io.out, 1);
	if (io.err >= 0)
		set_nonblock(io.err, 1);
	if (io.in >= 0)
		set_nonblock(io.in, 1);
	if (new_container)
		c->mntns = mntns;
	rc = 0;
	frame_begin(&out, MSG_ACK, m->seq);
	frame_add_u64(&out, F_PID, (uint64_t)pid);
out:
	free(argv);
	free(envp);
	return rc;
}

static int handle_start_pod(const struct msg *m, struct err *e)
{
	const char *host = msg_str(m, F_HOSTNAME, NULL), *share = msg_str(m, F_SHARE, NULL);
	if (test_mode)
		return 0;
	if (host && sethostname(host, strlen(host)) < 0)
		return fail_errno(e, "sethostname %s", host);
	if (share && mount_share(share, msg_str(m, F_SHAREFS, "virtiofs"), SHARE_ROOT, e) < 0)
		return -1;
	return 0;
}

static int handle_new_container(const struct msg *m, struct err *e)
{
	const char *id = msg_str(m, F_ID, "");
	struct container *c = NULL;
	if (!valid_id(id))
		return fail(e, EINVAL, "invalid container id \"%s\"", id);
	if ((c = container_by_id(id))) {
		struct proc *init = proc_by_stream(c->init_stream);
		if (init && !init->exited)
			return fail(e, EEXIST, "container %s is running", id);
		if (c->mntns >= 0) /* a restart: the old namespace goes */
			close(c->mntns);
		c->used = 0;
		c = NULL;
	}
	for (int i = 0; i < MAX_CONTAINERS && !c; i++)
		if (!containers[i].used)
			c = &containers[i];
	if (!c)
		return fail(e, EAGAIN, "too many containers");
	memset(c, 0, sizeof(*c));
	if (start_process(m, c, 1, e) < 0)
		return -1;
	c->used = 1;
	c->init_stream = msg_u64(m, F_STREAM, 0);
	snprintf(c->id, sizeof(c->id), "%s", id);
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

static int handle_signal(const struct msg *m, struct err *e)
{
	struct proc *p = proc_by_stream(msg_u64(m, F_STREAM, 0));
	uint64_t sig = msg_u64(m, F_SIGNAL, 0);
	if (sig == 0 || sig >= NSIG)
		return fail(e, EINVAL, "invalid signal %llu", (unsigned long long)sig);
	if (!p || p->exited)
		return fail(e, ESRCH, "no such process");
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

static void dispatch(const struct msg *m)
{
	struct err e = {0};
	int rc = 0, shutdown = 0;

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

/* ---- channels --------------------------------------------------------------------------------------- */

/* A read of 0 means the host side is not connected (virtio-serial): drop partial frames, wait for it. */
static void channel_down(int *down, struct reader *r, int is_ctl)
{
	if (test_mode) /* the test host closed its end: done */
		exit(0);
	*down = 1;
	reader_reset(r);
	if (is_ctl)
		negotiated = 0;
}

static void on_ctl(void)
{
	uint8_t chunk[65536];
	ssize_t n = read(ctl_fd, chunk, sizeof(chunk));
	if (n <= 0) {
		if (n == 0 || (errno != EAGAIN && errno != EINTR))
			channel_down(&ctl_down, &ctl_rd, 1);
		return;
	}
	if (reader_feed(&ctl_rd, chunk, (size_t)n) < 0) {
		log_msg("control buffer overflow: resetting");
		reader_reset(&ctl_rd);
		return;
	}
	for (;;) {
		uint64_t type;
		uint32_t seq, len;
		const uint8_t *body;
		const char *why = NULL;
		int r = reader_next(&ctl_rd, READER_CTL, &type, &seq, &body, &len, &why);
		if (r == 0)
			return;
		if (r < 0) {
			struct err e;
			fail(&e, EMSGSIZE, "bad control frame: %s", why);
			send_error(seq, &e);
			reader_reset(&ctl_rd);
			return;
		}
		struct msg m;
		if (msg_decode((uint32_t)type, seq, body, len, &m, &why) < 0) {
			struct err e;
			fail(&e, EINVAL, "bad payload: %s", why);
			send_error(seq, &e);
			continue;
		}
		dispatch(&m);
		msg_free(&m);
	}
}

static int stdin_backlog(void)
{
	for (int i = 0; i < MAX_PROCS; i++)
		if (procs[i].used && procs[i].inbuf.len - procs[i].inoff > STDIN_HIGH_WATER)
			return 1;
	return 0;
}

static void flush_stdin(struct proc *p)
{
	while (p->in >= 0 && p->inoff < p->inbuf.len) {
		ssize_t w = write(p->in, p->inbuf.data + p->inoff, p->inbuf.len - p->inoff);
		if (w < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return;
			close_in(p); /* EPIPE: the process closed its stdin */
			return;
		}
		p->inoff += (size_t)w;
	}
	if (p->inoff == p->inbuf.len) {
		p->inbuf.len = p->inoff = 0;
		if (p->in_eof && p->in >= 0) {
			if (p->terminal) {
				static const char eot = 4; /* ^D: EOF at the line discipline */
				(void)write(p->in, &eot, 1);
				p->in_eof = 0;
			} else {
				close_in(p);
			}
		}
	}
}

static void on_io(void)
{
	uint8_t chunk[65536];
	ssize_t n = read(io_fd, chunk, sizeof(chunk));
	if (n <= 0) {
		if (n == 0 || (errno != EAGAIN && errno != EINTR))
			channel_down(&io_down, &io_rd, 0);
		return;
	}
	if (reader_feed(&io_rd, chunk, (size_t)n) < 0) {
		reader_reset(&io_rd);
		return;
	}
	for (;;) {
		uint64_t stream;
		uint32_t unused, len;
		const uint8_t *body;
		const char *why = NULL;
		int r = reader_next(&io_rd, READER_IO, &stream, &unused, &body, &len, &why);
		if (r <= 0) {
			if (r < 0) {
				log_msg("bad stream frame: %s", why);
				reader_reset(&io_rd);
			}
			return;
		}
		struct proc *p = proc_by_stream(stream);
		if (!p || p->in < 0)
			continue;
		if (len == 0) {
			p->in_eof = 1;
		} else if (buf_reserve(&p->inbuf, len) == 0) {
			memcpy(p->inbuf.data + p->inbuf.len, body, len);
			p->inbuf.len += len;
		}
		flush_stdin(p);
	}
}

static int loop(void)
{
	static struct pollfd pfd[3 + 3 * MAX_PROCS];
	static struct proc *owner[3 + 3 * MAX_PROCS];
	static int which[3 + 3 * MAX_PROCS];

	for (;;) {
		int n = 0, throttle = stdin_backlog();
		pfd[n++] = (struct pollfd){.fd = ctl_down ? -1 : ctl_fd, .events = POLLIN};
		pfd[n++] = (struct pollfd){.fd = io_down || throttle ? -1 : io_fd, .events = POLLIN};
		pfd[n++] = (struct pollfd){.fd = sig_fd, .events = POLLIN};
		for (int i = 0; i < MAX_PROCS; i++) {
			struct proc *p = &procs[i];
			if (!p->used || p->exited)
				continue;
			short pending = p->terminal && p->inoff < p->inbuf.len ? POLLOUT : 0;
			if (p->out >= 0)
				owner[n] = p, which[n] = 1,
				pfd[n++] = (struct pollfd){.fd = p->out, .events = POLLIN | pending};
			if (p->err >= 0)
				owner[n] = p, which[n] = 2, pfd[n++] = (struct pollfd){.fd = p->err, .events = POLLIN};
			if (p->in >= 0 && p->in != p->out && p->inoff < p->inbuf.len)
				owner[n] = p, which[n] = 3, pfd[n++] = (struct pollfd){.fd = p->in, .events = POLLOUT};
		}
		int r = poll(pfd, n, ctl_down || io_down ? 20 : -1);
		if (r < 0 && errno != EINTR)
			return -1;
		if (ctl_down || io_down) /* retry a port that was down: the host may have come back */
			ctl_down = io_down = 0;
		if (pfd[2].revents)
			reap();
		if (pfd[0].revents)
			on_ctl();
		if (pfd[1].revents)
			on_io();
		for (int i = 3; i < n; i++) {
			struct proc *p = owner[i];
			if (!pfd[i].revents || !p->used || p->exited)
				continue;
			if (which[i] == 1 && p->out == pfd[i].fd) {
				if (pfd[i].revents & POLLOUT)
					flush_stdin(p);
				if (p->out >= 0 && pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
					pump_output(p, &p->out, p->stream);
			} else if (which[i] == 2 && p->err == pfd[i].fd) {
				pump_output(p, &p->err, p->stream + 1);
			} else if (which[i] == 3 && p->in == pfd[i].fd) {
				flush_stdin(p);
			}
		}
	}
}

static void print_tables(void)
{
	for (const struct msg_def *d = msg_table; d->name; d++)
		printf("msg %u %s\n", d->type, d->name);
	for (int t = 1; t <= F_MAX_TAG; t++)
		printf("field %d %s %s%s\n", t, field_table[t].name, field_table[t].kind == KIND_U64 ? "u64" : "str",
		       field_table[t].list ? " list" : "");
}

int main(int argc, char **argv)
{
	struct err e = {0};
	sigset_t mask;

	if (argc == 2 && strcmp(argv[1], "--tables") == 0) {
		print_tables();
		return 0;
	}
	if (argc >= 4 && strcmp(argv[1], "--test") == 0) {
		test_mode = 1;
		ctl_fd = atoi(argv[2]);
		io_fd = atoi(argv[3]);
		if (argc >= 5)
			share_root = argv[4];
	} else if (getpid() != 1) {
		fprintf(stderr, "usage: hc-agent runs as PID 1 in the guest, or: hc-agent --test CTLFD IOFD [ROOT]\n");
		return 2;
	} else {
		if (boot_mounts(&e) < 0)
			goto fatal;
		if (boot_probe_requested()) /* accelerator probe and boot-floor benchmark: off at once */
			power_off();
		if (boot_modules(&e) < 0 || boot_loopback(&e) < 0)
			goto fatal;
		if ((ctl_fd = boot_open_port("hc.ctl", 10000, &e)) < 0 || (io_fd = boot_open_port("hc.io", 10000, &e)) < 0)
			goto fatal;
	}
	for (int i = 0; i < MAX_PROCS; i++)
		procs[i].in = procs[i].out = procs[i].err = -1;
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sig_fd < 0) {
		fail_errno(&e, "signalfd");
		goto fatal;
	}
	loop();
	fail_errno(&e, "poll");
fatal:
	log_msg("fatal: %s", e.msg);
	if (!test_mode)
		power_off();
	return 1;
}
