/*
 * The builtins (docs/protocol.md, "Builtins"): the agent binary as a multi-call binary in an EXEC's process, so the
 * host can copy files in and out of a container and list its processes without tar or ps in its image. archive
 * and extract are tar.c's.
 */
#define _GNU_SOURCE
#include "builtin.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "tar.h"

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

static int usage(const char *text)
{
	dprintf(2, "usage: %s\n", text);
	return 1;
}

static int archive_main(int argc, char **argv)
{
	return argc == 2 ? tar_archive(1, argv[1]) : usage("archive PATH");
}

static int extract_main(int argc, char **argv)
{
	if ((argc != 3 && argc != 5) || (strcmp(argv[2], "0") != 0 && strcmp(argv[2], "1") != 0))
		return usage("extract DIR OWNERS [OLD NEW]  (OWNERS: 1 the archive's, 0 none)");
	return tar_extract(0, argv[1], argv[2][0] == '1', argc == 5 ? argv[3] : NULL, argc == 5 ? argv[4] : NULL);
}

/* "MODE SIZE": st_mode in octal (with the type bits), st_size; 2 when there is no such path. */
static int stat_main(int argc, char **argv)
{
	struct stat st;
	if (argc != 2)
		return usage("stat PATH");
	if (stat(argv[1], &st) < 0) {
		int missing = errno == ENOENT || errno == ENOTDIR;
		dprintf(2, "stat %s: %s\n", argv[1], strerror(errno));
		return missing ? 2 : 1;
	}
	return dprintf(1, "%o %lld\n", (unsigned)st.st_mode, (long long)st.st_size) < 0;
}

/* A small /proc file, NUL-terminated; its length, or -1 (the process is gone). */
static ssize_t slurp(const char *path, char *buf, size_t len)
{
	size_t n = 0;
	ssize_t r = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	while (n < len - 1 && (r = read(fd, buf + n, len - 1 - n)) > 0)
		n += (size_t)r;
	close(fd);
	buf[n] = 0;
	return r < 0 ? -1 : (ssize_t)n;
}

/* Control characters (cmdline's NULs among them) as spaces, trailing ones dropped. */
static void printable(char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			s[i] = ' ';
	while (n && s[n - 1] == ' ')
		n--;
	s[n] = 0;
}

/* "PID PPID UID STATE CPU_TICKS START_TICKS TTY_NR\tCMD"; nothing for a process that went meanwhile. */
static int ps_line(int pid)
{
	char path[64], stat[1024], status[4096], cmd[4096], state;
	unsigned long long utime, stime, start;
	int ppid, tty;
	unsigned uid;
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	if (slurp(path, stat, sizeof(stat)) <= 0)
		return 0;
	char *open_paren = strchr(stat, '('), *close_paren = strrchr(stat, ')'); /* comm may hold ')' */
	if (!open_paren || !close_paren ||
	    sscanf(close_paren + 1, " %c %d %*d %*d %d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d %llu",
		   &state, &ppid, &tty, &utime, &stime, &start) != 6)
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	const char *u = slurp(path, status, sizeof(status)) > 0 ? strstr(status, "\nUid:") : NULL;
	if (!u || sscanf(u + 5, "%u", &uid) != 1)
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/cmdline", pid);
	ssize_t n = slurp(path, cmd, sizeof(cmd));
	if (n < 0)
		return 0;
	printable(cmd, (size_t)n);
	if (!*cmd) { /* a kernel thread, or a zombie: [comm] */
		*close_paren = 0;
		snprintf(cmd, sizeof(cmd), "[%s]", open_paren + 1);
		printable(cmd, strlen(cmd));
	}
	return dprintf(1, "%d %d %u %c %llu %llu %d\t%s\n", pid, ppid, uid, state, utime + stime, start, tty, cmd) < 0;
}

static int by_pid(const void *a, const void *b)
{
	int x = *(const int *)a, y = *(const int *)b;
	return (x > y) - (x < y);
}

/* The processes of /proc (the container's PID namespace), this one left out, by pid. */
static int ps_main(int argc, char **argv)
{
	char uptime[64];
	int *pids = NULL, rc = 0;
	size_t n = 0, cap = 0;
	struct dirent *de;
	(void)argv;
	if (argc != 1)
		return usage("ps");
	DIR *d = opendir("/proc");
	if (!d || slurp("/proc/uptime", uptime, sizeof(uptime)) <= 0) {
		dprintf(2, "ps /proc: %s\n", strerror(errno));
		if (d)
			closedir(d);
		return 1;
	}
	uptime[strcspn(uptime, " \n")] = 0;
	while ((de = readdir(d))) {
		char *end;
		long pid = strtol(de->d_name, &end, 10);
		if (*end || pid <= 0 || pid == getpid())
			continue;
		if (n == cap) {
			int *more = realloc(pids, (cap = cap ? cap * 2 : 256) * sizeof(*pids));
			if (!more) {
				rc = 1;
				break;
			}
			pids = more;
		}
		pids[n++] = (int)pid;
	}
	closedir(d);
	qsort(pids, n, sizeof(*pids), by_pid);
	if (rc || dprintf(1, "# %ld %s\n", sysconf(_SC_CLK_TCK), uptime) < 0)
		rc = 1;
	for (size_t i = 0; i < n && !rc; i++)
		rc = ps_line(pids[i]);
	free(pids);
	return rc;
}

static const struct {
	const char *name;
	builtin_fn fn;
} builtins[] = {
	{"archive", archive_main}, {"extract", extract_main}, {"stat", stat_main}, {"ps", ps_main},
};

builtin_fn builtin_find(const char *name)
{
	for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++)
		if (strcmp(builtins[i].name, name) == 0)
			return builtins[i].fn;
	return NULL;
}

void builtin_run(builtin_fn fn, char **argv)
{
	int argc = 0;
	while (argv[argc])
		argc++;
	if (syscall(SYS_close_range, 3U, ~0U, 0U) < 0) /* before Linux 5.9, or a filter that refuses it */
		for (int fd = 3; fd < 65536; fd++)
			close(fd);
	_exit(fn(argc, argv) & 0xff);
}
