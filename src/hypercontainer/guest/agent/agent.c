/*
 * hc-agent: PID 1 of a hypercontainer VM. One poll loop serves the control port, the stream port, the pipes
 * of every process and a signalfd for SIGCHLD. Protocol: docs/protocol.md.
 *
 *   hc-agent                       as PID 1 in the guest
 *   hc-agent --test CTL IO [ROOT [CGROUPS]]
 *                                  over two inherited fds, for host tests; ROOT stands in for the pod share,
 *                                  CGROUPS for /run/hc/cgroup (read by CONTAINER_STATS only: tests make none)
 *   hc-agent --tables              prints the message, field, mount flag and phase tables (checked against
 *                                  the host's)
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
#include "cgroup.h"
#include "net.h"
#include "proto.h"
#include "spawn.h"
#include "util.h"
#include "agent.h"

struct proc procs[MAX_PROCS];
struct container containers[MAX_CONTAINERS];
int ctl_fd = -1, io_fd = -1, sig_fd = -1;
int test_mode, negotiated;
const char *share_root = SHARE_ROOT;
struct buf out;
static int ctl_down;
int io_down;
static struct reader ctl_rd;
struct reader io_rd;

/* ---- channels --------------------------------------------------------------------------------------- */

/* A read of 0 means the host side is not connected (virtio-serial): drop partial frames, wait for it. A port
 * that is down polls as ready at once, so the loop retries on a timer: 1 ms at first (the host is usually there
 * already at boot), doubling to 20 ms while it stays away. */
static int down_reported[2]; /* [0] stream, [1] control */
static int down_wait_ms = 1;

void channel_down(int *down, struct reader *r, int is_ctl)
{
	if (test_mode) /* the test host closed its end: done */
		exit(0);
	if (!down_reported[is_ctl]) /* once per disconnection, in the console log */
		log_msg("%s channel: host disconnected", is_ctl ? "control" : "stream");
	down_reported[is_ctl] = 1;
	*down = 1;
	reader_reset(r);
	if (is_ctl)
		negotiated = 0;
}

/* Data arrived on a channel: the host is there (again). */
void channel_up(int is_ctl)
{
	if (down_reported[is_ctl])
		log_msg("%s channel: host connected", is_ctl ? "control" : "stream");
	down_reported[is_ctl] = 0;
	down_wait_ms = 1;
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
	channel_up(1);
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
			struct err e = {0};
			fail(&e, EMSGSIZE, "bad control frame: %s", why);
			send_error(seq, &e);
			reader_reset(&ctl_rd);
			return;
		}
		struct msg m;
		if (msg_decode((uint32_t)type, seq, body, len, &m, &why) < 0) {
			struct err e = {0};
			fail(&e, EINVAL, "bad payload: %s", why);
			send_error(seq, &e);
			continue;
		}
		dispatch(&m);
		msg_free(&m);
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
			if (p->used && p->aborted) /* a relay the host ended: closed after SIGNAL's reply went out */
				relay_abort(p);
			if (!p->used || p->exited)
				continue;
			short pending = p->in >= 0 && p->in == p->out && p->inoff < p->inbuf.len ? POLLOUT : 0;
			if (p->out >= 0)
				owner[n] = p, which[n] = 1,
				pfd[n++] = (struct pollfd){.fd = p->out, .events = POLLIN | pending};
			if (p->err >= 0)
				owner[n] = p, which[n] = 2, pfd[n++] = (struct pollfd){.fd = p->err, .events = POLLIN};
			if (p->in >= 0 && p->in != p->out && p->inoff < p->inbuf.len)
				owner[n] = p, which[n] = 3, pfd[n++] = (struct pollfd){.fd = p->in, .events = POLLOUT};
		}
		int r = poll(pfd, n, ctl_down || io_down ? down_wait_ms : -1);
		if (ctl_down || io_down)
			down_wait_ms = down_wait_ms < 20 ? down_wait_ms * 2 : 20;
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
		if (field_table[t].name)
			printf("field %d %s %s%s\n", t, field_table[t].name,
			       field_table[t].kind == KIND_U64 ? "u64" : "str", field_table[t].list ? " list" : "");
	for (const struct flag_def *f = mount_flag_table; f->name; f++)
		printf("mountflag %u %s\n", f->bit, f->name);
	for (int p = PHASE_NONE + 1; p < PHASE_COUNT; p++)
		printf("phase %s\n", phase_names[p]);
}

int main(int argc, char **argv)
{
	struct err e = {0};
	sigset_t mask;

	if (argc == 1 && strcmp(argv[0], "pause") == 0) /* spawn_pause(): PID 1 of a shared PID namespace */
		pause_loop();
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
		if (argc >= 6)
			cg_root = argv[5];
	} else if (getpid() != 1) {
		fprintf(stderr, "usage: hc-agent runs as PID 1 in the guest, or: "
				"hc-agent --test CTLFD IOFD [ROOT [CGROUPS]]\n");
		return 2;
	} else {
		if (boot_mounts(&e) < 0)
			goto fatal;
		if (boot_probe_requested()) /* accelerator probe and boot-floor benchmark: off at once */
			power_off();
		if (boot_modules(&e) < 0 || net_loopback(&e) < 0)
			goto fatal;
		cg_boot();
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
