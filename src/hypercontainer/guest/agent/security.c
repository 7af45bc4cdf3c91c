/* Capabilities, no_new_privs and masked paths of a container (runc's defaults); parsers for the agent. */
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
	for (int cap = 0; cap < 64; cap++)
		if ((c->ambient & known) >> cap & 1 && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0)
			return fail_errno(e, "raise ambient capability %d", cap);
	if (c->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return fail_errno(e, "set no_new_privs");
	return 0;
}

static const char *const masked[] = {"/proc/acpi",	  "/proc/asound",     "/proc/kcore",
				     "/proc/keys",	  "/proc/latency_stats", "/proc/timer_list",
				     "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
				     "/sys/firmware"};
static const char *const readonly[] = {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"};

int mask_paths(struct err *e)
{
	struct stat st;
	for (size_t i = 0; i < sizeof(masked) / sizeof(masked[0]); i++) {
		const char *p = masked[i];
		if (lstat(p, &st) < 0) {
			if (errno == ENOENT)
				continue; /* not in this kernel */
			return fail_errno(e, "mask %s", p);
		}
		if (S_ISDIR(st.st_mode) ? mount("tmpfs", p, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
						"size=0,mode=0555") < 0
					: mount("/dev/null", p, NULL, MS_BIND, NULL) < 0)
			return fail_errno(e, "mask %s", p);
	}
	for (size_t i = 0; i < sizeof(readonly) / sizeof(readonly[0]); i++) {
		const char *p = readonly[i];
		if (lstat(p, &st) < 0 && errno == ENOENT)
			continue;
		if (mount(p, p, NULL, MS_BIND | MS_REC, NULL) < 0 ||
		    mount(p, p, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
			return fail_errno(e, "make %s read-only", p);
	}
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
