/*
 * The hostile agent (-DHC_HOSTILE; docs/protocol.md, "Hostile guest"): misbehaves on cue so that the host's
 * defences can be tested against a real guest. Never part of the shipped agent: its build is `make hostile`, and
 * the host's tests check that the shipped initramfs does not carry HOSTILE_MARKER.
 *
 * The cue: a NEW_CONTAINER or EXEC whose arg[0] is "hostile:MODE" (arg[1]: a mode's parameter). MODE is one of
 *   oversized      a reply whose control length is over CTL_MAX_PAYLOAD
 *   oversized-io   a stream frame whose length is over IO_MAX_DATA
 *   truncated      half a reply, then silence (nothing read or sent again)
 *   unknown-stream ACK, stream frames for streams the host never gave, then EXITED for one of them
 *   forge-exit     EOF and EXITED (status 99) for the pod's first container's process while it runs, then the
 *                  request is answered as a process that exits at once
 *   flood          ACK, then 64 KiB stream frames on the request's stream and on unknown streams for arg[1]
 *                  seconds (default 5) as fast as the host takes them, then EOF and EXITED 0
 *   flood-events   the request answered as a process that exits at once, then EXITED for the stream before
 *                  the request's (an earlier process, long gone) as fast as the host takes them, for arg[1] s (5)
 *   silence        nothing read or sent again
 *   close-ctl      the control channel is closed (the agent goes on serving the stream channel)
 *   close-io       the stream channel is closed, then the request is answered as a process that exits at once
 */
#ifdef HC_HOSTILE
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "hostile.h"

/* Found in the hostile binary only: the host's tests check the shipped initramfs for it. */
const char hostile_marker[] = "HC-HOSTILE-AGENT-BUILD";

static void forever_silent(void)
{
	log_msg("hostile: silent from now on");
	for (;;)
		sleep(1000);
}

static void ack(const struct msg *m, uint64_t pid)
{
	frame_begin(&out, MSG_ACK, m->seq);
	frame_add_u64(&out, F_PID, pid);
	send_frame();
}

static void exited(uint64_t stream, uint64_t status)
{
	frame_begin(&out, MSG_EXITED, 0);
	frame_add_u64(&out, F_STREAM, stream);
	frame_add_u64(&out, F_STATUS, status);
	send_frame();
}

/* The request answered as a process that printed nothing and exited with 0. */
static void exits_at_once(const struct msg *m, uint64_t stream)
{
	ack(m, 4242);
	send_io(stream, NULL, 0);
	send_io(stream + 1, NULL, 0);
	exited(stream, 0);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int hostile_cue(const struct msg *m)
{
	if (m->type != MSG_EXEC && m->type != MSG_NEW_CONTAINER)
		return 0;
	const char *arg0 = msg_count(m, F_ARG) ? msg_nth(m, F_ARG, 0)->str : "";
	if (strncmp(arg0, "hostile:", 8) != 0)
		return 0;
	const char *mode = arg0 + 8, *param = msg_count(m, F_ARG) > 1 ? msg_nth(m, F_ARG, 1)->str : "";
	uint64_t stream = msg_u64(m, F_STREAM, 0);
	log_msg("hostile: %s (%s)", mode, hostile_marker);
	if (strcmp(mode, "oversized") == 0) {
		uint8_t hdr[CTL_HDR + 16] = {0};
		put_u32(hdr, MSG_ACK);
		put_u32(hdr + 4, m->seq);
		put_u32(hdr + 8, CTL_MAX_PAYLOAD + 1);
		(void)write_full(ctl_fd, hdr, sizeof(hdr));
	} else if (strcmp(mode, "oversized-io") == 0) {
		uint8_t hdr[IO_HDR + 16] = {0};
		io_header(hdr, stream, IO_MAX_DATA + 1);
		(void)write_full(io_fd, hdr, sizeof(hdr));
		ack(m, 4242);
	} else if (strcmp(mode, "truncated") == 0) {
		frame_begin(&out, MSG_ACK, m->seq);
		frame_add_u64(&out, F_PID, 4242);
		frame_end(&out);
		(void)write_full(ctl_fd, out.data, out.len / 2);
		forever_silent();
	} else if (strcmp(mode, "unknown-stream") == 0) {
		static const uint8_t junk[] = "junk for a stream nobody opened\n";
		ack(m, 4242);
		for (uint64_t s = stream + 1000; s < stream + 1010; s++)
			send_io(s, junk, sizeof(junk) - 1);
		send_io(UINT64_MAX - 1, junk, sizeof(junk) - 1);
		exited(stream + 1000000, 0);
	} else if (strcmp(mode, "forge-exit") == 0) {
		uint64_t victim = 0;
		for (int i = 0; i < MAX_CONTAINERS; i++)
			if (containers[i].used && containers[i].init_stream != stream &&
			    (!victim || containers[i].init_stream < victim))
				victim = containers[i].init_stream;
		if (victim) {
			send_io(victim, NULL, 0);
			send_io(victim + 1, NULL, 0);
			exited(victim, 99);
		}
		exits_at_once(m, stream);
	} else if (strcmp(mode, "flood") == 0) {
		static uint8_t chunk[IO_MAX_DATA];
		int secs = *param ? atoi(param) : 5;
		memset(chunk, 'F', sizeof(chunk));
		ack(m, 4242);
		double end = now() + (secs > 0 ? secs : 5);
		unsigned long long frames = 0;
		while (now() < end) {
			send_io(stream, chunk, sizeof(chunk));
			send_io(stream + 1, chunk, sizeof(chunk));
			send_io(stream + 2000, chunk, sizeof(chunk)); /* nobody's */
			frames += 3;
		}
		log_msg("hostile: flood sent %llu frames", frames);
		send_io(stream, NULL, 0);
		send_io(stream + 1, NULL, 0);
		exited(stream, 0);
	} else if (strcmp(mode, "flood-events") == 0) {
		int secs = *param ? atoi(param) : 5;
		unsigned long long events = 0;
		exits_at_once(m, stream);
		double end = now() + (secs > 0 ? secs : 5);
		while (now() < end) { /* the stream before this one: an earlier process, long gone */
			exited(stream - 2, 0);
			events++;
		}
		log_msg("hostile: flood-events sent %llu EXITED", events);
	} else if (strcmp(mode, "silence") == 0) {
		forever_silent();
	} else if (strcmp(mode, "close-ctl") == 0) {
		close(ctl_fd);
		ctl_fd = -1; /* poll skips it: the stream channel is still served */
	} else if (strcmp(mode, "close-io") == 0) {
		close(io_fd);
		io_fd = -1; /* poll skips it; what is sent on it is lost */
		exits_at_once(m, stream);
	} else {
		struct err e = {0};
		fail(&e, EINVAL, "hostile: unknown mode %s", mode);
		send_error(m->seq, &e);
	}
	return 1;
}
#endif
