#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int fail(struct err *e, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
	e->code = code;
	return -1;
}

int fail_errno(struct err *e, const char *fmt, ...)
{
	int code = errno;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
	if (n >= 0 && (size_t)n < sizeof(e->msg))
		snprintf(e->msg + n, sizeof(e->msg) - n, ": %s", strerror(code));
	e->code = code;
	return -1;
}

int in_phase(struct err *e, enum phase phase)
{
	if (e->phase == PHASE_NONE)
		e->phase = phase;
	return -1;
}

void log_msg(const char *fmt, ...)
{
	char line[600];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	(void)write_full(2, "hc-agent: ", 10);
	(void)write_full(2, line, n);
}

int write_full(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n) {
		ssize_t w = write(fd, c, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		c += w;
		n -= w;
	}
	return 0;
}

int set_nonblock(int fd, int on)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return -1;
	return fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

int mkdir_p(const char *path, unsigned mode)
{
	char tmp[4096];
	size_t n = strlen(path);
	if (n >= sizeof(tmp))
		return errno = ENAMETOOLONG, -1;
	memcpy(tmp, path, n + 1);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(tmp, mode) < 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	if (mkdir(tmp, mode) < 0 && errno != EEXIST)
		return -1;
	return 0;
}

int path_is_clean_relative(const char *p)
{
	if (!*p || *p == '/')
		return 0;
	while (*p) {
		const char *e = strchr(p, '/');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
			return 0;
		p += n;
		if (*p == '/')
			p++;
	}
	return 1;
}

int read_line(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	buf[strcspn(buf, "\n")] = 0;
	return (int)strlen(buf);
}

int find_executable(const char *file, const char *path, char *out, size_t size)
{
	if (!*file)
		return errno = ENOENT, -1;
	if (strchr(file, '/') || !path)
		return 0;
	int denied = 0;
	for (const char *p = path;;) {
		const char *colon = strchr(p, ':');
		int n = colon ? (int)(colon - p) : (int)strlen(p);
		int len = n ? snprintf(out, size, "%.*s/%s", n, p, file) : snprintf(out, size, "%s", file);
		if (len < 0 || (size_t)len >= size)
			return 0;
		struct stat st;
		if (stat(out, &st) == 0) {
			if (!S_ISREG(st.st_mode))
				denied = 1; /* execve's EACCES */
			else if (access(out, X_OK) == 0)
				return 1;
			else if (errno == EACCES)
				denied = 1;
			else
				return 0;
		} else if (errno == EACCES) {
			denied = 1;
		} else if (errno != ENOENT && errno != ENOTDIR) {
			return 0;
		}
		if (!colon)
			break;
		p = colon + 1;
	}
	return errno = denied ? EACCES : ENOENT, -1;
}
