/* Process I/O: output to stream frames, stream frames to stdin, exits to EXITED events; port relays alike. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "boot.h"
#include "cgroup.h"
#include "spawn.h"

void send_frame(void)
{
	frame_end(&out);
	if (write_full(ctl_fd, out.data, out.len) < 0)
		log_msg("control write: %s", strerror(errno));
}

void send_error(uint32_t seq, const struct err *e)
{
	if (frame_error(&out, seq, e->code > 0 ? e->code : EIO, e->msg, e->phase) < 0)
		return;
	send_frame();
}

void send_io(uint64_t stream, const void *data, uint32_t len)
{
	uint8_t frame[IO_HDR + IO_MAX_DATA];
	io_header(frame, stream, len);
	memcpy(frame + IO_HDR, data, len);
	if (write_full(io_fd, frame, IO_HDR + len) < 0)
		log_msg("stream write: %s", strerror(errno));
}

/* ---- processes -------------------------------------------------------------------------------------- */

struct proc *proc_by_stream(uint64_t stream)
{
	for (int i = 0; i < MAX_PROCS; i++)
		if (procs[i].used && procs[i].stream == stream)
			return &procs[i];
	return NULL;
}

struct container *container_by_id(const char *id)
{
	for (int i = 0; i < MAX_CONTAINERS; i++)
		if (containers[i].used && strcmp(containers[i].id, id) == 0)
			return &containers[i];
	return NULL;
}

static void proc_finish_if_done(struct proc *p);

/* A relay whose two directions have ended is over: EXITED, and its slot is free. */
static void relay_end_if_closed(struct proc *p)
{
	if (p->relay && !p->exited && p->in < 0 && p->out < 0) {
		p->exited = 1;
		proc_finish_if_done(p);
	}
}

static void close_in(struct proc *p)
{
	if (p->relay && p->in >= 0)
		shutdown(p->in, SHUT_WR); /* the host's EOF, passed on; the socket may still be read */
	if (p->in >= 0 && p->in != p->out)
		close(p->in);
	p->in = -1;
	buf_free(&p->inbuf);
	p->inoff = 0;
}

static void force_eof(struct proc *p, int *fdp, uint64_t stream)
{
	int fd = *fdp;
	*fdp = -1;
	if (fd == p->in && !p->relay) /* a terminal: its input goes with it */
		p->in = -1;
	if (fd != p->in) /* a relay's socket stays open while the host may still write */
		close(fd);
	send_io(stream, NULL, 0);
	relay_end_if_closed(p);
}

/* Reads one chunk of output. Returns 1 if data was sent, 0 at EOF (fd closed, EOF sent), -1 if none now. */
int pump_output(struct proc *p, int *fdp, uint64_t stream)
{
	static uint8_t chunk[IO_MAX_DATA];
	ssize_t n = read(*fdp, chunk, sizeof(chunk));
	if (n > 0) {
		send_io(stream, chunk, (uint32_t)n);
		return 1;
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return -1;
	if (n < 0 && p->relay && !p->status)
		p->status = errno; /* ECONNRESET */
	/* EOF, or EIO from a pty master whose slave side is gone. */
	force_eof(p, fdp, stream);
	return 0;
}

void relay_abort(struct proc *p)
{
	if (!p->status)
		p->status = ECONNABORTED;
	close_in(p); /* the socket stays open if the reading side still holds it ... */
	if (p->out >= 0)
		force_eof(p, &p->out, p->stream); /* ... which closes it and ends the relay */
	else
		relay_end_if_closed(p);
}

static void proc_finish_if_done(struct proc *p)
{
	if (!p->exited || p->out >= 0 || p->err >= 0)
		return;
	close_in(p);
	frame_begin(&out, MSG_EXITED, 0);
	frame_add_u64(&out, F_STREAM, p->stream);
	frame_add_u64(&out, F_STATUS, (uint64_t)p->status);
	if (p->oom_killed)
		frame_add_u64(&out, F_OOM_KILLED, 1);
	send_frame();
	if (p->held) /* exited while held (killed before START_CONTAINER) */
		close(p->held - 1);
	memset(p, 0, sizeof(*p));
	p->in = p->out = p->err = -1;
}

static void on_exit_status(struct proc *p, int wstatus)
{
	p->exited = 1;
	p->status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
	/*
	 * A container's first process: any OOM kill in the container during its run counts (docker's OOMKilled; a
	 * shell passing on 137 from the process killed). Any other: it must have died of SIGKILL itself.
	 */
	if (*p->cgroup && (p->container_init || (WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL)))
		p->oom_killed = cg_oom_kills(p->cgroup) > p->oom_base;
	if (WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL && p->emulated_sig && !p->oom_killed)
		p->status = 128 + p->emulated_sig;
	/* Its namespace is gone with it, so are its processes; or the last of a removed container's. */
	if (*p->cgroup && (p->ns_init || !container_by_id(p->cgroup)))
		cg_remove(p->cgroup);
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

void reap(void)
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

int stdin_backlog(void)
{
	for (int i = 0; i < MAX_PROCS; i++)
		if (procs[i].used && procs[i].inbuf.len - procs[i].inoff > STDIN_HIGH_WATER)
			return 1;
	return 0;
}

void flush_stdin(struct proc *p)
{
	while (p->in >= 0 && p->inoff < p->inbuf.len) {
		ssize_t w = write(p->in, p->inbuf.data + p->inoff, p->inbuf.len - p->inoff);
		if (w < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return;
			if (p->relay && !p->status)
				p->status = errno;
			close_in(p); /* EPIPE: the process closed its stdin */
			relay_end_if_closed(p);
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
				relay_end_if_closed(p);
			}
		}
	}
}

void on_io(void)
{
	uint8_t chunk[65536];
	ssize_t n = read(io_fd, chunk, sizeof(chunk));
	if (n <= 0) {
		if (n == 0 || (errno != EAGAIN && errno != EINTR))
			channel_down(&io_down, &io_rd, 0);
		return;
	}
	channel_up(0);
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
		if (stream == 0) { /* echo: the host checks this channel both ways */
			if (len)
				send_io(0, body, len);
			continue;
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

