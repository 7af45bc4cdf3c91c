/* Wire format of docs/protocol.md: control frames, stream frames and payload fields. */
#ifndef HC_PROTO_H
#define HC_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define PROTO_VERSION 1
#define CTL_HDR 12
#define IO_HDR 12
#define CTL_MAX_PAYLOAD (1024u * 1024u)
#define IO_MAX_DATA 65536u
#define FIELD_MAX_STR 65536u
#define FIELD_MAX_COUNT 4096u

enum msg_type {
	MSG_VERSION = 1,
	MSG_PING = 2,
	MSG_START_POD = 3,
	MSG_NEW_CONTAINER = 4,
	MSG_EXEC = 5,
	MSG_SIGNAL = 6,
	MSG_WINSIZE = 7,
	MSG_SHUTDOWN = 8,
	MSG_REMOVE_CONTAINER = 9,
	MSG_STATS = 10,
	MSG_CONTAINER_STATS = 11,
	MSG_OPEN_PORT = 12,
	MSG_START_CONTAINER = 13,
	MSG_ACK = 256,
	MSG_ERROR = 257,
	MSG_EXITED = 512,
};

enum field_kind { KIND_U64 = 1, KIND_STR = 2 };

enum field_tag {
	F_VERSION = 1, F_AGENT, F_CODE, F_MESSAGE, F_ID, F_ROOTFS, F_ARG, F_ENV, F_CWD, F_UID,
	F_GID, F_GROUP, F_TERMINAL, F_STREAM, F_STATUS, F_SIGNAL, F_ROWS, F_COLS, F_HOSTNAME,
	F_PID, F_READONLY, F_STDIN, F_SHARE, F_SHAREFS, F_UPTIME_MS, F_MOUNT_SRC, F_MOUNT_DST, F_MOUNT_FLAGS,
	F_SYSCTL, F_RLIMIT,
	/* 31-33 (net_mac, net_addr, net_gw) are retired: never reused; unknown, so skipped like any unknown tag. */
	F_CLOCK_NS = 34, F_SEED, F_CAP_BOUNDING, F_CAP_EFFECTIVE,
	F_CAP_PERMITTED, F_CAP_INHERITABLE, F_CAP_AMBIENT, F_NO_NEW_PRIVS, F_PRIVILEGED, F_SHARED_PID_NS, F_OOM_KILLED,
	F_PID_NS_OF, F_PHASE, F_CONTAINERS, F_PROCESSES, F_FDS, F_NET_IF, F_NET_ROUTE, F_MEMORY_LIMIT, F_MASKED_PATHS,
	F_READONLY_PATHS, F_SECCOMP, F_SECCOMP_FLAGS, F_CPU_NS, F_MEM_USAGE, F_MEM_WORKING_SET, F_MEM_RSS, F_PIDS,
	F_PORT, F_BUILTIN, F_HOLD, F_MAX_TAG = F_HOLD,
};

/* mount_flags bits (NEW_CONTAINER). */
enum mount_flag { MOUNT_READONLY = 1, MOUNT_TMPFS = 2, MOUNT_BLOCK = 4, MOUNT_ALL = 7 };

struct field_def {
	uint16_t tag;
	const char *name;
	enum field_kind kind;
	int list;
};

/* The one field table of the agent; index = tag (retired tags: an empty entry, name NULL). */
extern const struct field_def field_table[F_MAX_TAG + 1];
/* The message table: number and name, ends with {0, NULL}. */
struct msg_def {
	uint32_t type;
	const char *name;
};
extern const struct msg_def msg_table[];
/* The mount flag table: bit and name, ends with {0, NULL}. */
struct flag_def {
	unsigned bit;
	const char *name;
};
extern const struct flag_def mount_flag_table[];
/* The wire name of each enum phase (util.h); NULL for PHASE_NONE. */
extern const char *const phase_names[];

/* A decoded field: str points into the payload and is NUL-terminated in a copy owned by the message. */
struct field {
	uint16_t tag;
	uint64_t u64;
	char *str;
};

struct msg {
	uint32_t type;
	uint32_t seq;
	size_t nfields;
	struct field *fields;
	char *strbuf; /* owns all str values */
};

/* Growable output buffer for encoding. */
struct buf {
	uint8_t *data;
	size_t len, cap;
};

uint32_t get_u32(const uint8_t *p);
uint64_t get_u64(const uint8_t *p);
void put_u32(uint8_t *p, uint32_t v);
void put_u64(uint8_t *p, uint64_t v);

/* Parses a payload; returns 0, or -1 with *why set to a static string. Unknown tags are skipped. */
int msg_decode(uint32_t type, uint32_t seq, const uint8_t *payload, size_t len, struct msg *out,
	       const char **why);
void msg_free(struct msg *m);
/* Lookups: first value of a tag; count of a (list) tag; nth value. */
const struct field *msg_get(const struct msg *m, uint16_t tag);
size_t msg_count(const struct msg *m, uint16_t tag);
const struct field *msg_nth(const struct msg *m, uint16_t tag, size_t n);
uint64_t msg_u64(const struct msg *m, uint16_t tag, uint64_t dflt);
const char *msg_str(const struct msg *m, uint16_t tag, const char *dflt);

/* Encoding: start a control frame, add fields, finish (fills the length). */
int buf_reserve(struct buf *b, size_t more);
void buf_free(struct buf *b);
int frame_begin(struct buf *b, uint32_t type, uint32_t seq);
int frame_add_u64(struct buf *b, uint16_t tag, uint64_t v);
int frame_add_str(struct buf *b, uint16_t tag, const char *s);
void frame_end(struct buf *b);
/* A whole ERROR frame: code, message and, unless PHASE_NONE, phase. */
int frame_error(struct buf *b, uint32_t seq, int code, const char *message, int phase);
/* Stream frame header into hdr[IO_HDR]. */
void io_header(uint8_t *hdr, uint64_t stream, uint32_t len);

/* Incremental frame reader over a byte stream (either channel). */
struct reader {
	uint8_t *data;
	size_t len, cap, off; /* bytes [off, len) are unread */
};
enum reader_kind { READER_CTL, READER_IO };
/* Appends bytes; returns -1 if the buffer cannot grow. */
int reader_feed(struct reader *r, const uint8_t *p, size_t n);
/*
 * Takes the next complete frame if there is one: returns 1 and fills hdr fields and a pointer to the body
 * (valid until the next call), 0 if more bytes are needed, -1 on a protocol error (*why set).
 */
int reader_next(struct reader *r, enum reader_kind kind, uint64_t *a, uint32_t *b, const uint8_t **body,
		uint32_t *len, const char **why);
void reader_reset(struct reader *r);

#endif
