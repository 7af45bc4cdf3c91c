/* Error convention and small helpers shared by the agent's files. */
#ifndef HC_UTIL_H
#define HC_UTIL_H

#include <stddef.h>
#include <stdint.h>

/*
 * Functions that can fail return an int < 0 and fill a struct err: an errno value and a short text naming the
 * operation and its object ("mount /proc: Operation not permitted"). The host gets both in an ERROR reply, and
 * the phase, where a step of a process start failed (docs/protocol.md, `phase`; names in proto.c).
 */
enum phase {
	PHASE_NONE, /* the request itself was refused: no step ran */
	PHASE_SPAWN, PHASE_CGROUP, PHASE_NAMESPACE, PHASE_MOUNT, PHASE_SYSCTL, PHASE_RLIMIT, PHASE_CHDIR, PHASE_USER,
	PHASE_CAPABILITIES, PHASE_SECCOMP, PHASE_EXEC, PHASE_COUNT,
};

struct err {
	int code;
	int phase; /* enum phase */
	char msg[512];
};

int fail(struct err *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* fail() with errno and strerror(errno) appended. */
int fail_errno(struct err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Returns -1, naming the step that failed unless a step within it named itself already. */
int in_phase(struct err *e, enum phase phase);

void log_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int write_full(int fd, const void *p, size_t n);
int set_nonblock(int fd, int on);
int mkdir_p(const char *path, unsigned mode);
/* The first line of a small file (sysfs), without its newline; -1 if it cannot be read. */
int read_line(const char *path, char *buf, size_t len);
/* A relative path with no "." or ".." components and no empty ones. */
int path_is_clean_relative(const char *p);
/*
 * execvp's search of `path` (a PATH value) for `file`, done ahead (runc looks the binary up at create): 1 with
 * the file to exec in out; 0 where the search is execvp's own (a file named with a '/', a step that failed for
 * another reason than execvp would report); -1 with errno as execvp's would be (ENOENT, or EACCES if only a
 * candidate that cannot be run was found).
 */
int find_executable(const char *file, const char *path, char *out, size_t size);

#endif
