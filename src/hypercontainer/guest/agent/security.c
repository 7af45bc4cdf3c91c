/* Capabilities, no_new_privs, seccomp and masked paths of a container (runc's defaults); parsers for the agent. */
#define _GNU_SOURCE
#include "security.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

/* linux/capability.h, which musl does not ship. */
#define CAP_VERSION_3 0x20080522
struct cap_header {
	uint32_t version;
	int pid;
};
struct cap_data {
	uint32_t effective, permitted, inheritable;
};

#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_RAISE 2
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

void caps_default(struct cap_spec *c, int privileged)
{
	uint64_t set = privileged ? CAPS_ALL : CAPS_DEFAULT;
	*c = (struct cap_spec){.bounding = set, .effective = set, .permitted = set};
}

/* The capabilities this kernel knows: 0..last. */
static int last_cap(void)
{
	int last = 0;
	while (last < 63 && prctl(PR_CAPBSET_READ, last + 1, 0, 0, 0) >= 0)
		last++;
	return last;
}

int caps_bound(const struct cap_spec *c, struct err *e)
{
	int last = last_cap();
	for (int cap = 0; cap <= last; cap++)
		if (!(c->bounding >> cap & 1) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
			return fail_errno(e, "drop capability %d from the bounding set", cap);
	if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
		return fail_errno(e, "keep capabilities across setuid");
	return 0;
}

int caps_apply(const struct cap_spec *c, struct err *e)
{
	uint64_t known = last_cap() >= 63 ? ~0ULL : (1ULL << (last_cap() + 1)) - 1;
	uint64_t eff = c->effective & known, prm = c->permitted & known, inh = c->inheritable & known;
	struct cap_header h = {CAP_VERSION_3, 0};
	struct cap_data d[2] = {{(uint32_t)eff, (uint32_t)prm, (uint32_t)inh},
				{(uint32_t)(eff >> 32), (uint32_t)(prm >> 32), (uint32_t)(inh >> 32)}};

	if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0)
		return fail_errno(e, "clear keepcaps");
	if (syscall(SYS_capset, &h, d) < 0)
		return fail_errno(e, "set capabilities (effective %llx, permitted %llx, inheritable %llx)",
				  (unsigned long long)eff, (unsigned long long)prm, (unsigned long long)inh);
	/* Ambient capabilities: absent on old kernels, where asking for none is fine. */
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && (c->ambient & known))
		return fail_errno(e, "clear ambient capabilities");
	/* One not both permitted and inheritable is left out (EPERM), as runc does: `runc spec`'s config lists
	 * ambient capabilities without inheritable ones. */
	for (int cap = 0; cap < 64; cap++)
		if ((c->ambient & known) >> cap & 1 && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0 &&
		    errno != EPERM)
			return fail_errno(e, "raise ambient capability %d", cap);
	if (c->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return fail_errno(e, "set no_new_privs");
	return 0;
}

const char *const default_masked_paths[] = {"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
					    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
					    "/proc/sched_debug", "/proc/scsi", "/sys/firmware", NULL};
const char *const default_readonly_paths[] = {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
					      "/proc/sysrq-trigger", NULL};

int container_path_ok(const char *p)
{
	size_t n = strlen(p);
	return p[0] == '/' && n < 4096 && p[n - 1] != '/' && path_is_clean_relative(p + 1);
}

/* A bind of the path onto itself, read-only, keeping the flags of the mount it is on (runc's readonlyPath). */
static int make_readonly(const char *p, struct err *e)
{
	struct statvfs sv;
	if (statvfs(p, &sv) < 0) {
		if (errno == ENOENT)
			return 0;
		return fail_errno(e, "make %s read-only", p);
	}
	unsigned long keep = (sv.f_flag & ST_NOSUID ? MS_NOSUID : 0) | (sv.f_flag & ST_NODEV ? MS_NODEV : 0) |
			     (sv.f_flag & ST_NOEXEC ? MS_NOEXEC : 0);
	if (mount(p, p, NULL, MS_BIND | MS_REC, NULL) < 0 ||
	    mount(p, p, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | keep, NULL) < 0)
		return fail_errno(e, "make %s read-only", p);
	return 0;
}

/* /dev/null over a file, an empty read-only tmpfs over a directory (runc's maskPath). */
static int mask(const char *p, struct err *e)
{
	struct stat st;
	if (stat(p, &st) < 0) {
		if (errno == ENOENT || errno == ENOTDIR)
			return 0; /* not in this kernel, or not in this root */
		return fail_errno(e, "mask %s", p);
	}
	if (S_ISDIR(st.st_mode) ? mount("tmpfs", p, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
					"size=0,mode=0555") < 0
				: mount("/dev/null", p, NULL, MS_BIND, NULL) < 0)
		return fail_errno(e, "mask %s", p);
	return 0;
}

int mask_paths(const char *const *masked, const char *const *readonly, struct err *e)
{
	for (const char *const *p = readonly; p && *p; p++)
		if (make_readonly(*p, e) < 0)
			return -1;
	for (const char *const *p = masked; p && *p; p++)
		if (mask(*p, e) < 0)
			return -1;
	return 0;
}

/* Standard base64 with padding; the length of the output, or -1 if malformed or over `cap`. */
static long base64_decode(const char *in, uint8_t *out, size_t cap)
{
	static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t n = strlen(in), len = 0;
	if (n % 4)
		return -1;
	for (size_t i = 0; i < n; i += 4) {
		uint32_t v = 0;
		int pad = 0;
		for (int j = 0; j < 4; j++) {
			const char *c = in[i + j] ? strchr(alphabet, in[i + j]) : NULL;
			if (in[i + j] == '=' && i + 4 == n && j >= 2 && (j == 3 || in[i + 3] == '='))
				pad++;
			else if (!c || pad)
				return -1;
			v = v << 6 | (c ? (uint32_t)(c - alphabet) : 0);
		}
		for (int j = 0; j < 3 - pad; j++) {
			if (len == cap)
				return -1;
			out[len++] = (uint8_t)(v >> (16 - 8 * j));
		}
	}
	return (long)len;
}

int seccomp_parse(const char *b64, uint64_t flags, struct seccomp_filter *f, struct err *e)
{
	size_t cap = SECCOMP_MAX_INSNS * 8;
	*f = (struct seccomp_filter){0};
	if (flags & ~(uint64_t)(SECCOMP_FLAG_LOG | SECCOMP_FLAG_SPEC_ALLOW))
		return fail(e, EINVAL, "seccomp_flags %llu: only LOG (2) and SPEC_ALLOW (4)", (unsigned long long)flags);
	if (strlen(b64) > (cap / 3 + 1) * 4)
		return fail(e, EINVAL, "seccomp filter over %d instructions", SECCOMP_MAX_INSNS);
	if (!(f->insns = malloc(cap)))
		return fail(e, ENOMEM, "out of memory");
	long n = base64_decode(b64, f->insns, cap);
	if (n <= 0 || n % 8) {
		seccomp_free(f);
		return fail(e, EINVAL, "seccomp filter is not base64 of 1 to %d instructions of 8 bytes",
			    SECCOMP_MAX_INSNS);
	}
	f->len = (size_t)n / 8;
	f->flags = (unsigned)flags;
	return 0;
}

void seccomp_free(struct seccomp_filter *f)
{
	free(f->insns);
	*f = (struct seccomp_filter){0};
}

int seccomp_install(const struct seccomp_filter *f, struct err *e)
{
	struct {
		unsigned short len;
		void *filter;
	} prog = {(unsigned short)f->len, f->insns}; /* struct sock_fprog */
	if (syscall(SYS_seccomp, 1 /* SECCOMP_SET_MODE_FILTER */, f->flags, &prog) < 0)
		return fail_errno(e, "load the seccomp filter (%zu instructions, flags %u)", f->len, f->flags);
	return 0;
}

char sig_default_action(int sig)
{
	switch (sig) {
	case SIGCHLD:
	case SIGCONT:
	case SIGURG:
	case SIGWINCH:
		return 'i';
	case SIGSTOP:
	case SIGTSTP:
	case SIGTTIN:
	case SIGTTOU:
		return 's';
	default:
		return 't';
	}
}

uint64_t status_mask(const char *status, const char *key)
{
	size_t n = strlen(key);
	for (const char *line = status; line && *line; line = strchr(line, '\n'), line = line ? line + 1 : NULL)
		if (strncmp(line, key, n) == 0 && line[n] == ':')
			return strtoull(line + n + 1, NULL, 16);
	return 0;
}

unsigned long long oom_kill_count(const char *text)
{
	for (const char *line = text; line && *line; line = strchr(line, '\n'), line = line ? line + 1 : NULL)
		if (strncmp(line, "oom_kill ", 9) == 0)
			return strtoull(line + 9, NULL, 10);
	return 0;
}
