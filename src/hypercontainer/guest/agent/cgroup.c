/* Per-container devices, memory and cpuacct cgroups (v1), and what they count. */
#define _GNU_SOURCE
#include "cgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "security.h"

const char *cg_root = CGROUP_ROOT;

/* cpuacct is optional: without it (a kernel that lacks it) CPU time is summed from the tasks' /proc stat. */
static const char *const controllers[] = {"devices", "memory", "cpuacct"};
#define NCONTROLLERS (sizeof(controllers) / sizeof(controllers[0]))
#define OPTIONAL_FROM 2
static int have[NCONTROLLERS]; /* hierarchies mounted */

/* runc's default: mknod of anything, read/write only of these. */
const char *const cg_default_devices[] = {
	"c *:* m", "b *:* m",
	"c 1:3 rwm",   /* null */
	"c 1:5 rwm",   /* zero */
	"c 1:7 rwm",   /* full */
	"c 1:8 rwm",   /* random */
	"c 1:9 rwm",   /* urandom */
	"c 5:0 rwm",   /* tty */
	"c 5:2 rwm",   /* ptmx */
	"c 136:* rwm", /* pts */
	NULL,
};

static int write_file(const char *path, const char *text, struct err *e)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return fail_errno(e, "open %s", path);
	int rc = write_full(fd, text, strlen(text));
	close(fd);
	return rc < 0 ? fail_errno(e, "write \"%s\" to %s", text, path) : 0;
}

static int mount_hierarchies(struct err *e)
{
	static int mounted;
	char path[128];
	if (mounted)
		return 0;
	for (size_t i = 0; i < NCONTROLLERS; i++) {
		struct stat st, parent;
		snprintf(path, sizeof(path), "%s/%s", cg_root, controllers[i]);
		if (mkdir_p(path, 0700) < 0)
			return fail_errno(e, "mkdir %s", path);
		have[i] = 1;
		if (stat(path, &st) == 0 && stat(cg_root, &parent) == 0 && st.st_dev != parent.st_dev)
			continue; /* mounted before this agent state (a restored template) */
		/*
		 * favordynmods (Linux 6.0+; the kernel's lock is global, one hierarchy sets it): a process's move into a
		 * container's cgroups no longer waits for an RCU grace period (~10 ms of each container start here), at
		 * a cost to fork and exit that a VM of a few containers does not notice.
		 */
		char opts[64];
		snprintf(opts, sizeof(opts), "%s,favordynmods", controllers[i]);
		if (mount("cgroup", path, "cgroup", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts) == 0 ||
		    mount("cgroup", path, "cgroup", MS_NOSUID | MS_NODEV | MS_NOEXEC, controllers[i]) == 0)
			continue;
		if (i < OPTIONAL_FROM)
			return fail_errno(e, "mount the %s cgroup", controllers[i]);
		log_msg("cgroups: no %s hierarchy (%s): CPU time from the tasks' stat", controllers[i], strerror(errno));
		have[i] = 0;
	}
	mounted = 1;
	return 0;
}

void cg_boot(void)
{
	struct err e;
	if (mount_hierarchies(&e) < 0)
		log_msg("cgroups: %s (retried at the first container)", e.msg);
}

/*
 * memory.limit_in_bytes, and memory.memsw.limit_in_bytes where the kernel accounts swap. The kernel keeps
 * memory <= memory+swap at every write, so memory+swap is lifted first, whatever a restart left there.
 */
static int set_memory_limit(const char *id, unsigned long long limit, struct err *e)
{
	char mem[256], memsw[256], value[32] = "-1";
	snprintf(mem, sizeof(mem), "%s/memory/%s/memory.limit_in_bytes", cg_root, id);
	snprintf(memsw, sizeof(memsw), "%s/memory/%s/memory.memsw.limit_in_bytes", cg_root, id);
	if (limit)
		snprintf(value, sizeof(value), "%llu", limit);
	int swap = access(memsw, F_OK) == 0;
	if (swap && write_file(memsw, "-1", e) < 0)
		return -1;
	if (write_file(mem, value, e) < 0)
		return -1;
	return swap && limit ? write_file(memsw, value, e) : 0;
}

int cg_create(const char *id, int privileged, unsigned long long memory_limit, struct err *e)
{
	char path[256];
	if (mount_hierarchies(e) < 0)
		return -1;
	for (size_t i = 0; i < NCONTROLLERS; i++) {
		snprintf(path, sizeof(path), "%s/%s/%s", cg_root, controllers[i], id);
		if (have[i] && mkdir(path, 0700) < 0 && errno != EEXIST)
			return fail_errno(e, "mkdir %s", path);
	}
	if (set_memory_limit(id, memory_limit, e) < 0)
		return -1;
	snprintf(path, sizeof(path), "%s/devices/%s/devices.deny", cg_root, id);
	if (write_file(path, "a", e) < 0)
		return -1;
	snprintf(path, sizeof(path), "%s/devices/%s/devices.allow", cg_root, id);
	if (privileged)
		return write_file(path, "a", e);
	for (const char *const *rule = cg_default_devices; *rule; rule++)
		if (write_file(path, *rule, e) < 0)
			return -1;
	return 0;
}

int cg_join(const char *id, struct err *e)
{
	char path[256];
	for (size_t i = 0; i < NCONTROLLERS; i++) {
		snprintf(path, sizeof(path), "%s/%s/%s/cgroup.procs", cg_root, controllers[i], id);
		if (have[i] && write_file(path, "0", e) < 0)
			return -1;
	}
	return 0;
}

unsigned long long cg_oom_kills(const char *id)
{
	char path[256], text[1024];
	snprintf(path, sizeof(path), "%s/memory/%s/memory.oom_control", cg_root, id);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, text, sizeof(text) - 1);
	close(fd);
	text[n > 0 ? n : 0] = 0;
	return oom_kill_count(text);
}

void cg_remove(const char *id)
{
	char path[256];
	for (size_t i = 0; i < NCONTROLLERS; i++) {
		snprintf(path, sizeof(path), "%s/%s/%s", cg_root, controllers[i], id);
		rmdir(path);
	}
}

unsigned long long cg_stat_value(const char *text, const char *key)
{
	size_t n = strlen(key);
	for (const char *line = text; line && *line; line = strchr(line, '\n'), line = line ? line + 1 : NULL)
		if (strncmp(line, key, n) == 0 && line[n] == ' ')
			return strtoull(line + n + 1, NULL, 10);
	return 0;
}

unsigned long long proc_cpu_ns(int pid)
{
	char path[64], text[1024];
	unsigned long long utime, stime;
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, text, sizeof(text) - 1);
	close(fd);
	text[n > 0 ? n : 0] = 0;
	const char *rest = strrchr(text, ')'); /* after the command, which may hold spaces and parentheses */
	if (!rest || sscanf(rest + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
		return 0;
	return (utime + stime) * (1000000000ULL / (unsigned long long)sysconf(_SC_CLK_TCK));
}

/* A small counter file (one number); -1 if it cannot be read. */
static int read_counter(const char *controller, const char *id, const char *file, unsigned long long *v)
{
	char path[256], text[64];
	snprintf(path, sizeof(path), "%s/%s/%s/%s", cg_root, controller, id, file);
	if (read_line(path, text, sizeof(text)) <= 0)
		return -1;
	*v = strtoull(text, NULL, 10);
	return 0;
}

int cg_stats(const char *id, struct cg_stats *s, struct err *e)
{
	char path[256], text[4096];
	memset(s, 0, sizeof(*s));
	if (read_counter("memory", id, "memory.usage_in_bytes", &s->mem_usage) < 0)
		return fail_errno(e, "no memory cgroup for container %s (%s/memory/%s)", id, cg_root, id);
	snprintf(path, sizeof(path), "%s/memory/%s/memory.stat", cg_root, id);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? 0 : read(fd, text, sizeof(text) - 1);
	if (fd >= 0)
		close(fd);
	text[n > 0 ? n : 0] = 0;
	unsigned long long inactive = cg_stat_value(text, "total_inactive_file");
	s->mem_working_set = s->mem_usage > inactive ? s->mem_usage - inactive : 0;
	s->mem_rss = cg_stat_value(text, "total_rss");
	if (read_counter("memory", id, "memory.limit_in_bytes", &s->mem_limit) < 0 || s->mem_limit >= 1ULL << 62)
		s->mem_limit = 0; /* the kernel's "unlimited" is PAGE_COUNTER_MAX pages */
	int have_cpu = read_counter("cpuacct", id, "cpuacct.usage", &s->cpu_ns) == 0;
	snprintf(path, sizeof(path), "%s/memory/%s/cgroup.procs", cg_root, id);
	FILE *procs = fopen(path, "re");
	int pid;
	while (procs && fscanf(procs, "%d", &pid) == 1) {
		s->pids++;
		if (!have_cpu)
			s->cpu_ns += proc_cpu_ns(pid);
	}
	if (procs)
		fclose(procs);
	return 0;
}
