/* Frame and field codec, see docs/protocol.md. No I/O here: this file is unit-tested on the host. */
#include "proto.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

const struct field_def field_table[F_MAX_TAG + 1] = {
	[F_VERSION] = {F_VERSION, "version", KIND_U64, 0},
	[F_AGENT] = {F_AGENT, "agent", KIND_STR, 0},
	[F_CODE] = {F_CODE, "code", KIND_U64, 0},
	[F_MESSAGE] = {F_MESSAGE, "message", KIND_STR, 0},
	[F_ID] = {F_ID, "id", KIND_STR, 0},
	[F_ROOTFS] = {F_ROOTFS, "rootfs", KIND_STR, 0},
	[F_ARG] = {F_ARG, "arg", KIND_STR, 1},
	[F_ENV] = {F_ENV, "env", KIND_STR, 1},
	[F_CWD] = {F_CWD, "cwd", KIND_STR, 0},
	[F_UID] = {F_UID, "uid", KIND_U64, 0},
	[F_GID] = {F_GID, "gid", KIND_U64, 0},
	[F_GROUP] = {F_GROUP, "group", KIND_U64, 1},
	[F_TERMINAL] = {F_TERMINAL, "terminal", KIND_U64, 0},
	[F_STREAM] = {F_STREAM, "stream", KIND_U64, 0},
	[F_STATUS] = {F_STATUS, "status", KIND_U64, 0},
	[F_SIGNAL] = {F_SIGNAL, "signal", KIND_U64, 0},
	[F_ROWS] = {F_ROWS, "rows", KIND_U64, 0},
	[F_COLS] = {F_COLS, "cols", KIND_U64, 0},
	[F_HOSTNAME] = {F_HOSTNAME, "hostname", KIND_STR, 0},
	[F_PID] = {F_PID, "pid", KIND_U64, 0},
	[F_READONLY] = {F_READONLY, "readonly", KIND_U64, 0},
	[F_STDIN] = {F_STDIN, "stdin", KIND_U64, 0},
	[F_SHARE] = {F_SHARE, "share", KIND_STR, 0},
	[F_SHAREFS] = {F_SHAREFS, "sharefs", KIND_STR, 0},
	[F_UPTIME_MS] = {F_UPTIME_MS, "uptime_ms", KIND_U64, 0},
	[F_MOUNT_SRC] = {F_MOUNT_SRC, "mount_src", KIND_STR, 1},
	[F_MOUNT_DST] = {F_MOUNT_DST, "mount_dst", KIND_STR, 1},
	[F_MOUNT_FLAGS] = {F_MOUNT_FLAGS, "mount_flags", KIND_U64, 1},
	[F_SYSCTL] = {F_SYSCTL, "sysctl", KIND_STR, 1},
	[F_RLIMIT] = {F_RLIMIT, "rlimit", KIND_STR, 1},
	[F_CLOCK_NS] = {F_CLOCK_NS, "clock_ns", KIND_U64, 0},
	[F_SEED] = {F_SEED, "seed", KIND_STR, 0},
	[F_CAP_BOUNDING] = {F_CAP_BOUNDING, "cap_bounding", KIND_U64, 0},
	[F_CAP_EFFECTIVE] = {F_CAP_EFFECTIVE, "cap_effective", KIND_U64, 0},
	[F_CAP_PERMITTED] = {F_CAP_PERMITTED, "cap_permitted", KIND_U64, 0},
	[F_CAP_INHERITABLE] = {F_CAP_INHERITABLE, "cap_inheritable", KIND_U64, 0},
	[F_CAP_AMBIENT] = {F_CAP_AMBIENT, "cap_ambient", KIND_U64, 0},
	[F_NO_NEW_PRIVS] = {F_NO_NEW_PRIVS, "no_new_privs", KIND_U64, 0},
	[F_PRIVILEGED] = {F_PRIVILEGED, "privileged", KIND_U64, 0},
	[F_SHARED_PID_NS] = {F_SHARED_PID_NS, "shared_pid_ns", KIND_U64, 0},
	[F_OOM_KILLED] = {F_OOM_KILLED, "oom_killed", KIND_U64, 0},
	[F_PID_NS_OF] = {F_PID_NS_OF, "pid_ns_of", KIND_STR, 0},
	[F_PHASE] = {F_PHASE, "phase", KIND_STR, 0},
	[F_CONTAINERS] = {F_CONTAINERS, "containers", KIND_U64, 0},
	[F_PROCESSES] = {F_PROCESSES, "processes", KIND_U64, 0},
	[F_FDS] = {F_FDS, "fds", KIND_U64, 0},
	[F_NET_IF] = {F_NET_IF, "net_if", KIND_STR, 1},
	[F_NET_ROUTE] = {F_NET_ROUTE, "net_route", KIND_STR, 1},
	[F_MEMORY_LIMIT] = {F_MEMORY_LIMIT, "memory_limit", KIND_U64, 0},
	[F_MASKED_PATHS] = {F_MASKED_PATHS, "masked_paths", KIND_STR, 1},
	[F_READONLY_PATHS] = {F_READONLY_PATHS, "readonly_paths", KIND_STR, 1},
	[F_SECCOMP] = {F_SECCOMP, "seccomp", KIND_STR, 0},
	[F_SECCOMP_FLAGS] = {F_SECCOMP_FLAGS, "seccomp_flags", KIND_U64, 0},
	[F_CPU_NS] = {F_CPU_NS, "cpu_ns", KIND_U64, 0},
	[F_MEM_USAGE] = {F_MEM_USAGE, "mem_usage", KIND_U64, 0},
	[F_MEM_WORKING_SET] = {F_MEM_WORKING_SET, "mem_working_set", KIND_U64, 0},
	[F_MEM_RSS] = {F_MEM_RSS, "mem_rss", KIND_U64, 0},
	[F_PIDS] = {F_PIDS, "pids", KIND_U64, 0},
	[F_PORT] = {F_PORT, "port", KIND_U64, 0},
	[F_BUILTIN] = {F_BUILTIN, "builtin", KIND_U64, 0},
	[F_HOLD] = {F_HOLD, "hold", KIND_U64, 0},
};

const struct msg_def msg_table[] = {
	{MSG_VERSION, "VERSION"}, {MSG_PING, "PING"}, {MSG_START_POD, "START_POD"},
	{MSG_NEW_CONTAINER, "NEW_CONTAINER"}, {MSG_EXEC, "EXEC"}, {MSG_SIGNAL, "SIGNAL"},
	{MSG_WINSIZE, "WINSIZE"}, {MSG_SHUTDOWN, "SHUTDOWN"}, {MSG_REMOVE_CONTAINER, "REMOVE_CONTAINER"},
	{MSG_STATS, "STATS"}, {MSG_CONTAINER_STATS, "CONTAINER_STATS"}, {MSG_OPEN_PORT, "OPEN_PORT"},
	{MSG_START_CONTAINER, "START_CONTAINER"},
	{MSG_ACK, "ACK"}, {MSG_ERROR, "ERROR"}, {MSG_EXITED, "EXITED"}, {0, NULL},
};

const struct flag_def mount_flag_table[] = {
	{MOUNT_READONLY, "READONLY"}, {MOUNT_TMPFS, "TMPFS"}, {MOUNT_BLOCK, "BLOCK"}, {0, NULL},
};

const char *const phase_names[PHASE_COUNT] = {
	[PHASE_NONE] = NULL, [PHASE_SPAWN] = "spawn", [PHASE_CGROUP] = "cgroup", [PHASE_NAMESPACE] = "namespace",
	[PHASE_MOUNT] = "mount", [PHASE_SYSCTL] = "sysctl", [PHASE_RLIMIT] = "rlimit", [PHASE_CHDIR] = "chdir",
	[PHASE_USER] = "user", [PHASE_CAPABILITIES] = "capabilities", [PHASE_SECCOMP] = "seccomp",
	[PHASE_EXEC] = "exec",
};

uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

uint64_t get_u64(const uint8_t *p)
{
	return (uint64_t)get_u32(p) << 32 | get_u32(p + 4);
}

void put_u32(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

void put_u64(uint8_t *p, uint64_t v)
{
	put_u32(p, v >> 32);
	put_u32(p + 4, (uint32_t)v);
}

static const struct field_def *field_def(uint16_t tag)
{
	if (tag == 0 || tag > F_MAX_TAG || !field_table[tag].name) /* unknown, or retired */
		return NULL;
	return &field_table[tag];
}

int msg_decode(uint32_t type, uint32_t seq, const uint8_t *p, size_t len, struct msg *out, const char **why)
{
	size_t off = 0, n = 0, strbytes = 0;

	memset(out, 0, sizeof(*out));
	out->type = type;
	out->seq = seq;
	/* First pass: validate and size. */
	while (off < len) {
		if (len - off < 6)
			return *why = "truncated field header", -1;
		uint16_t tag = (uint16_t)(p[off] << 8 | p[off + 1]);
		uint32_t flen = get_u32(p + off + 2);
		off += 6;
		if (flen > len - off)
			return *why = "field overruns payload", -1;
		const struct field_def *d = field_def(tag);
		if (d && d->kind == KIND_U64 && flen != 8)
			return *why = "u64 field with length other than 8", -1;
		if (d && d->kind == KIND_STR) {
			if (flen > FIELD_MAX_STR)
				return *why = "string field too long", -1;
			if (memchr(p + off, 0, flen))
				return *why = "string field holds a NUL byte", -1;
			strbytes += flen + 1;
		}
		if (d && ++n > FIELD_MAX_COUNT)
			return *why = "too many fields", -1;
		off += flen;
	}
	out->fields = calloc(n ? n : 1, sizeof(struct field));
	out->strbuf = malloc(strbytes ? strbytes : 1);
	if (!out->fields || !out->strbuf) {
		msg_free(out);
		return *why = "out of memory", -1;
	}
	/* Second pass: fill. */
	char *s = out->strbuf;
	for (off = 0; off < len;) {
		uint16_t tag = (uint16_t)(p[off] << 8 | p[off + 1]);
		uint32_t flen = get_u32(p + off + 2);
		const struct field_def *d = field_def(tag);
		off += 6;
		if (d) {
			struct field *f = &out->fields[out->nfields];
			if (!d->list && msg_get(out, tag)) {
				msg_free(out);
				return *why = "repeated non-list field", -1;
			}
			f->tag = tag;
			if (d->kind == KIND_U64) {
				f->u64 = get_u64(p + off);
			} else {
				memcpy(s, p + off, flen);
				s[flen] = 0;
				f->str = s;
				s += flen + 1;
			}
			out->nfields++;
		}
		off += flen;
	}
	return 0;
}

void msg_free(struct msg *m)
{
	free(m->fields);
	free(m->strbuf);
	m->fields = NULL;
	m->strbuf = NULL;
	m->nfields = 0;
}

const struct field *msg_nth(const struct msg *m, uint16_t tag, size_t n)
{
	for (size_t i = 0; i < m->nfields; i++)
		if (m->fields[i].tag == tag && n-- == 0)
			return &m->fields[i];
	return NULL;
}

const struct field *msg_get(const struct msg *m, uint16_t tag)
{
	return msg_nth(m, tag, 0);
}

size_t msg_count(const struct msg *m, uint16_t tag)
{
	size_t c = 0;
	for (size_t i = 0; i < m->nfields; i++)
		c += m->fields[i].tag == tag;
	return c;
}

uint64_t msg_u64(const struct msg *m, uint16_t tag, uint64_t dflt)
{
	const struct field *f = msg_get(m, tag);
	return f ? f->u64 : dflt;
}

const char *msg_str(const struct msg *m, uint16_t tag, const char *dflt)
{
	const struct field *f = msg_get(m, tag);
	return f ? f->str : dflt;
}

int buf_reserve(struct buf *b, size_t more)
{
	if (b->len + more <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + more)
		cap *= 2;
	uint8_t *d = realloc(b->data, cap);
	if (!d)
		return -1;
	b->data = d;
	b->cap = cap;
	return 0;
}

void buf_free(struct buf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

int frame_begin(struct buf *b, uint32_t type, uint32_t seq)
{
	b->len = 0;
	if (buf_reserve(b, CTL_HDR) < 0)
		return -1;
	put_u32(b->data, type);
	put_u32(b->data + 4, seq);
	put_u32(b->data + 8, 0);
	b->len = CTL_HDR;
	return 0;
}

static int frame_add(struct buf *b, uint16_t tag, const void *v, uint32_t len)
{
	if (buf_reserve(b, 6 + (size_t)len) < 0)
		return -1;
	b->data[b->len] = tag >> 8;
	b->data[b->len + 1] = tag & 0xff;
	put_u32(b->data + b->len + 2, len);
	memcpy(b->data + b->len + 6, v, len);
	b->len += 6 + len;
	return 0;
}

int frame_add_u64(struct buf *b, uint16_t tag, uint64_t v)
{
	uint8_t raw[8];
	put_u64(raw, v);
	return frame_add(b, tag, raw, 8);
}

int frame_add_str(struct buf *b, uint16_t tag, const char *s)
{
	size_t n = strlen(s);
	if (n > FIELD_MAX_STR)
		n = FIELD_MAX_STR;
	return frame_add(b, tag, s, (uint32_t)n);
}

void frame_end(struct buf *b)
{
	put_u32(b->data + 8, (uint32_t)(b->len - CTL_HDR));
}

int frame_error(struct buf *b, uint32_t seq, int code, const char *message, int phase)
{
	if (frame_begin(b, MSG_ERROR, seq) < 0 || frame_add_u64(b, F_CODE, (uint64_t)code) < 0 ||
	    frame_add_str(b, F_MESSAGE, message) < 0)
		return -1;
	if (phase > PHASE_NONE && phase < PHASE_COUNT && frame_add_str(b, F_PHASE, phase_names[phase]) < 0)
		return -1;
	frame_end(b);
	return 0;
}

void io_header(uint8_t *hdr, uint64_t stream, uint32_t len)
{
	put_u64(hdr, stream);
	put_u32(hdr + 8, len);
}

int reader_feed(struct reader *r, const uint8_t *p, size_t n)
{
	if (!n)
		return 0;
	if (r->off && r->off == r->len)
		r->off = r->len = 0;
	if (r->len + n > r->cap) {
		if (r->off) { /* compact first */
			memmove(r->data, r->data + r->off, r->len - r->off);
			r->len -= r->off;
			r->off = 0;
		}
		size_t cap = r->cap ? r->cap : 4096;
		while (cap < r->len + n)
			cap *= 2;
		if (cap > 2 * (CTL_MAX_PAYLOAD + CTL_HDR))
			return -1;
		uint8_t *d = realloc(r->data, cap);
		if (!d)
			return -1;
		r->data = d;
		r->cap = cap;
	}
	memcpy(r->data + r->len, p, n);
	r->len += n;
	return 0;
}

int reader_next(struct reader *r, enum reader_kind kind, uint64_t *a, uint32_t *b, const uint8_t **body,
		uint32_t *len, const char **why)
{
	size_t avail = r->len - r->off;
	const uint8_t *p;
	uint32_t n;

	if (avail < 12)
		return 0; /* (a fresh reader has no buffer yet: no pointer arithmetic on NULL) */
	p = r->data + r->off;
	if (kind == READER_CTL) {
		*a = get_u32(p);
		*b = get_u32(p + 4);
		n = get_u32(p + 8);
		if (n > CTL_MAX_PAYLOAD)
			return *why = "control payload over 1 MiB", -1;
	} else {
		*a = get_u64(p);
		*b = 0;
		n = get_u32(p + 8);
		if (n > IO_MAX_DATA)
			return *why = "stream frame over 64 KiB", -1;
	}
	if (avail < 12 + (size_t)n)
		return 0;
	*body = p + 12;
	*len = n;
	r->off += 12 + (size_t)n;
	return 1;
}

void reader_reset(struct reader *r)
{
	r->off = r->len = 0;
}
