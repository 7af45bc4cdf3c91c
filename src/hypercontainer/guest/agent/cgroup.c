/* Per-container devices and memory cgroups (v1). */
#define _GNU_SOURCE
#include "cgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "security.h"

static const char *const controllers[] = {"devices", "memory"};

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
	for (size_t i = 0; i < sizeof(controllers) / sizeof(controllers[0]); i++) {
		struct stat st, parent;
		snprintf(path, sizeof(path), "%s/%s", CGROUP_ROOT, controllers[i]);
		if (mkdir_p(path, 0700) < 0)
			return fail_errno(e, "mkdir %s", path);
		if (stat(path, &st) == 0 && stat(CGROUP_ROOT, &parent) == 0 && st.st_dev != parent.st_dev)
			continue; /* mounted before this agent state (a restored template) */
		if (mount("cgroup", path, "cgroup", MS_NOSUID | MS_NODEV | MS_NOEXEC, controllers[i]) < 0)
			return fail_errno(e, "mount the %s cgroup", controllers[i]);
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
	snprintf(mem, sizeof(mem), "%s/memory/%s/memory.limit_in_bytes", CGROUP_ROOT, id);
	snprintf(memsw, sizeof(memsw), "%s/memory/%s/memory.memsw.limit_in_bytes", CGROUP_ROOT, id);
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
	for (size_t i = 0; i < sizeof(controllers) / sizeof(controllers[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s/%s", CGROUP_ROOT, controllers[i], id);
		if (mkdir(path, 0700) < 0 && errno != EEXIST)
			return fail_errno(e, "mkdir %s", path);
	}
	if (set_memory_limit(id, memory_limit, e) < 0)
		return -1;
	snprintf(path, sizeof(path), "%s/devices/%s/devices.deny", CGROUP_ROOT, id);
	if (write_file(path, "a", e) < 0)
		return -1;
	snprintf(path, sizeof(path), "%s/devices/%s/devices.allow", CGROUP_ROOT, id);
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
	for (size_t i = 0; i < sizeof(controllers) / sizeof(controllers[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s/%s/cgroup.procs", CGROUP_ROOT, controllers[i], id);
		if (write_file(path, "0", e) < 0)
			return -1;
	}
	return 0;
}

unsigned long long cg_oom_kills(const char *id)
{
	char path[256], text[1024];
	snprintf(path, sizeof(path), "%s/memory/%s/memory.oom_control", CGROUP_ROOT, id);
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
	for (size_t i = 0; i < sizeof(controllers) / sizeof(controllers[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s/%s", CGROUP_ROOT, controllers[i], id);
		rmdir(path);
	}
}
