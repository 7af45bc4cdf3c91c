/*
 * The archive and extract builtins (docs/protocol.md, "Builtins"): POSIX ustar headers, a PAX 'x' header before an
 * entry whose name, link target or numbers do not fit them. Both walk with *at() calls from directory fds and
 * O_NOFOLLOW: below the named path no symlink is ever followed, and extract never writes through one.
 */
#define _GNU_SOURCE
#include "tar.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "util.h"

#define BLK 512
#define CHUNK 65536
#define PAX_MAX (1u << 20) /* bytes of one extended header the extractor takes */

static const char *tool; /* "archive" or "extract": the start of every message */
static const char *cur;  /* what a message names: the entry, or the path given */
static unsigned char buf[CHUNK];

/* One line on stderr, "archive NAME: WHY"; returns 1, the builtin's failure status. */
static int say(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n = snprintf(line, sizeof(line), "%s %.512s: ", tool, cur);
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - n, fmt, ap);
	va_end(ap);
	dprintf(2, "%s\n", line);
	return 1;
}

static int sayerr(void)
{
	return say("%s", strerror(errno));
}

/* ---- archive ---------------------------------------------------------------------------------------------- */

static struct {
	int fd;
	size_t len;
	unsigned char b[CHUNK];
} out;

static char *name; /* the entry being archived: TAR_MAX_NAME + 2 bytes (a directory's "/") */
static struct link {
	dev_t dev;
	ino_t ino;
	char *name;
} *links;
static size_t nlinks;
static struct {
	char *p;
	size_t len, cap;
} pax;

static int flush(void)
{
	if (write_full(out.fd, out.b, out.len) < 0)
		return say("writing the archive: %s", strerror(errno));
	out.len = 0;
	return 0;
}

static int put(const void *p, size_t n)
{
	for (const unsigned char *c = p; n;) {
		if (out.len == sizeof(out.b) && flush())
			return 1;
		size_t k = n < sizeof(out.b) - out.len ? n : sizeof(out.b) - out.len;
		memcpy(out.b + out.len, c, k);
		out.len += k, c += k, n -= k;
	}
	return 0;
}

/* Zeros up to the next block boundary after `size` bytes of data. */
static int pad(uint64_t size)
{
	static const unsigned char zero[BLK];
	return put(zero, (BLK - size % BLK) % BLK);
}

static int fits(uint64_t v, size_t width)
{
	return v < (uint64_t)1 << (3 * (width - 1));
}

static void octal(unsigned char *f, size_t width, uint64_t v)
{
	snprintf((char *)f, width, "%0*llo", (int)width - 1, fits(v, width) ? (unsigned long long)v : 0ULL);
}

struct hdr {
	const char *name, *link;
	char type;
	uint64_t mode, uid, gid, size, mtime, major, minor;
};

static void fill(unsigned char *h, const struct hdr *e)
{
	unsigned sum = 0;
	size_t n = strlen(e->name), l = e->link ? strlen(e->link) : 0;
	memset(h, 0, BLK);
	memcpy(h, e->name, n < 100 ? n : 100);
	octal(h + 100, 8, e->mode);
	octal(h + 108, 8, e->uid);
	octal(h + 116, 8, e->gid);
	octal(h + 124, 12, e->size);
	octal(h + 136, 12, e->mtime);
	h[156] = (unsigned char)e->type;
	memcpy(h + 157, e->link ? e->link : "", l < 100 ? l : 100);
	memcpy(h + 257, "ustar\0" "00", 8);
	octal(h + 329, 8, e->major);
	octal(h + 337, 8, e->minor);
	memset(h + 148, ' ', 8);
	for (int i = 0; i < BLK; i++)
		sum += h[i];
	snprintf((char *)h + 148, 7, "%06o", sum);
}

/* A PAX record "LEN key=value\n", LEN counting itself. */
static int pax_add(const char *key, const char *val)
{
	size_t n = strlen(key) + strlen(val) + 3, total = n + 1;
	while ((size_t)snprintf(NULL, 0, "%zu", total) + n != total)
		total = n + (size_t)snprintf(NULL, 0, "%zu", total);
	if (pax.len + total + 1 > pax.cap) {
		char *p = realloc(pax.p, (pax.len + total + 1) * 2);
		if (!p)
			return say("out of memory");
		pax.p = p, pax.cap = (pax.len + total + 1) * 2;
	}
	snprintf(pax.p + pax.len, total + 1, "%zu %s=%s\n", total, key, val);
	pax.len += total;
	return 0;
}

static int pax_num(const char *key, long long v)
{
	char s[24];
	snprintf(s, sizeof(s), "%lld", v);
	return pax_add(key, s);
}

/* The entry's header, after a PAX header with what does not fit it. */
static int header(const struct stat *st, char type, const char *link, uint64_t size)
{
	struct hdr h = {.name = name, .link = link, .type = type, .mode = st->st_mode & 07777, .uid = st->st_uid,
			.gid = st->st_gid, .size = size, .mtime = (uint64_t)st->st_mtime};
	unsigned char b[BLK];
	int mtime_fits = st->st_mtime >= 0 && fits(h.mtime, 12);
	pax.len = 0;
	if ((strlen(name) > 100 && pax_add("path", name)) || (link && strlen(link) > 100 && pax_add("linkpath", link)) ||
	    (!fits(size, 12) && pax_num("size", (long long)size)) || (!fits(h.uid, 8) && pax_num("uid", h.uid)) ||
	    (!fits(h.gid, 8) && pax_num("gid", h.gid)) || (!mtime_fits && pax_num("mtime", (long long)st->st_mtime)))
		return 1;
	if (!mtime_fits)
		h.mtime = 0;
	if (type == '3' || type == '4')
		h.major = major(st->st_rdev), h.minor = minor(st->st_rdev);
	if (pax.len) {
		struct hdr x = {.name = "././@PaxHeader", .type = 'x', .mode = 0644, .size = pax.len};
		fill(b, &x);
		if (put(b, BLK) || put(pax.p, pax.len) || pad(pax.len))
			return 1;
	}
	fill(b, &h);
	return put(b, BLK);
}

/* A regular file's header and data: exactly the size in the header, whatever the file does meanwhile. */
static int emit_file(int at, const char *base, int follow)
{
	struct stat st;
	int shrunk = 0, rc = 0, fd = openat(at, base, O_RDONLY | O_NONBLOCK | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW));
	if (fd < 0)
		return sayerr();
	errno = 0;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		rc = errno ? sayerr() : say("changed while being archived");
		close(fd);
		return rc;
	}
	uint64_t left = (uint64_t)st.st_size;
	rc = header(&st, '0', NULL, left);
	while (!rc && left) {
		size_t want = left < CHUNK ? left : CHUNK;
		ssize_t n = shrunk ? (ssize_t)want : read(fd, buf, want);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			rc = sayerr();
		else if (n == 0)
			shrunk = 1, memset(buf, 0, sizeof(buf));
		else
			rc = put(buf, (size_t)n), left -= (uint64_t)n;
	}
	close(fd);
	return rc || pad((uint64_t)st.st_size);
}

static int emit(int at, const char *base, int follow, size_t len, int depth);

static int by_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A directory (its header unless `self` is 0) and its entries, sorted by name. */
static int emit_dir(int at, const char *base, int follow, size_t len, int depth, const struct stat *st, int self)
{
	char **names = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;
	struct dirent *de;
	if (self) {
		memcpy(name + len, "/", 2);
		rc = header(st, '5', NULL, 0);
		name[len] = 0;
		if (rc)
			return rc;
	}
	if (depth >= TAR_MAX_DEPTH)
		return say("more than %d directory levels", TAR_MAX_DEPTH);
	int fd = openat(at, base, O_RDONLY | O_DIRECTORY | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW));
	DIR *d = fd < 0 ? NULL : fdopendir(fd);
	if (!d) {
		rc = sayerr();
		if (fd >= 0)
			close(fd);
		return rc;
	}
	while (!rc && (de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (n == cap) {
			char **more = realloc(names, (cap = cap ? cap * 2 : 64) * sizeof(*names));
			if (!more) {
				rc = say("out of memory");
				break;
			}
			names = more;
		}
		if (!(names[n++] = strdup(de->d_name)))
			rc = say("out of memory"), n--;
	}
	if (!rc && n) /* an empty directory has no names (and names is NULL) */
		qsort(names, n, sizeof(*names), by_name);
	for (size_t i = 0; i < n && !rc; i++) {
		size_t k = strlen(names[i]), off = len ? len + 1 : 0;
		if (off + k > TAR_MAX_NAME) {
			rc = say("an entry under it has a name over %d bytes", TAR_MAX_NAME);
			break;
		}
		if (len)
			name[len] = '/';
		memcpy(name + off, names[i], k + 1);
		rc = emit(dirfd(d), names[i], 0, off + k, depth + 1);
		name[len] = 0;
	}
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	closedir(d);
	return rc;
}

static int emit(int at, const char *base, int follow, size_t len, int depth)
{
	struct stat st;
	cur = name;
	if (fstatat(at, base, &st, follow ? 0 : AT_SYMLINK_NOFOLLOW) < 0)
		return sayerr();
	if (S_ISDIR(st.st_mode))
		return emit_dir(at, base, follow, len, depth, &st, 1);
	if (S_ISSOCK(st.st_mode)) {
		dprintf(2, "archive %.512s: a socket, skipped\n", name);
		return 0;
	}
	if (st.st_nlink > 1) { /* a second name of an inode archived already: a hard link to the first */
		for (size_t i = 0; i < nlinks; i++)
			if (links[i].dev == st.st_dev && links[i].ino == st.st_ino)
				return header(&st, '1', links[i].name, 0);
		struct link *more = realloc(links, (nlinks + 1) * sizeof(*links));
		if (!more || !(more[nlinks].name = strdup(name)))
			return links = more ? more : links, say("out of memory");
		links = more;
		links[nlinks].dev = st.st_dev, links[nlinks++].ino = st.st_ino;
	}
	switch (st.st_mode & S_IFMT) {
	case S_IFREG:
		return emit_file(at, base, follow);
	case S_IFLNK: {
		static char target[TAR_MAX_NAME + 1];
		ssize_t n = readlinkat(at, base, target, sizeof(target));
		if (n < 0)
			return sayerr();
		if ((size_t)n >= sizeof(target))
			return say("link target over %d bytes", TAR_MAX_NAME);
		target[n] = 0;
		return header(&st, '2', target, 0);
	}
	case S_IFCHR:
		return header(&st, '3', NULL, 0);
	case S_IFBLK:
		return header(&st, '4', NULL, 0);
	case S_IFIFO:
		return header(&st, '6', NULL, 0);
	default:
		return say("unknown file type %o", (unsigned)(st.st_mode & S_IFMT));
	}
}

int tar_archive(int fd, const char *path)
{
	char p[PATH_MAX];
	size_t n = strlen(path);
	int rc = 0, dfd = -1, follow = 0, contents = n >= 2 && strcmp(path + n - 2, "/.") == 0;
	struct stat st;
	tool = "archive", cur = path;
	out.fd = fd, out.len = 0, nlinks = 0;
	if (path[0] != '/')
		return say("not an absolute path");
	if (n >= sizeof(p))
		return say("%s", strerror(ENAMETOOLONG));
	memcpy(p, path, n + 1);
	if (contents)
		p[--n] = 0;
	while (n > 1 && p[n - 1] == '/') /* "DIR/": DIR itself, followed if a symlink */
		p[--n] = 0, follow = 1;
	char *slash = strrchr(p, '/'), *base = slash + 1;
	if (n == 1)
		base = "."; /* "/": entries ".", "./bin", ... */
	else if (strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
		return say("ends in a . or .. component");
	if (slash != p)
		*slash = 0;
	if (!(name = malloc(TAR_MAX_NAME + 2)))
		return say("out of memory");
	if ((dfd = open(slash == p ? "/" : p, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
	    fstatat(dfd, base, &st, follow || contents ? 0 : AT_SYMLINK_NOFOLLOW) < 0)
		rc = sayerr();
	else if ((follow || contents) && !S_ISDIR(st.st_mode))
		rc = say("%s", strerror(ENOTDIR));
	else if (contents)
		name[0] = 0, rc = emit_dir(dfd, base, 1, 0, 0, &st, 0);
	else
		strcpy(name, base), rc = emit(dfd, base, follow, strlen(base), 0);
	if (!rc) { /* the end: two zero blocks */
		memset(buf, 0, 2 * BLK);
		rc = put(buf, 2 * BLK) || flush();
	}
	if (dfd >= 0)
		close(dfd);
	for (size_t i = 0; i < nlinks; i++)
		free(links[i].name);
	free(links), links = NULL;
	free(pax.p), pax.p = NULL, pax.cap = 0;
	free(name), name = NULL;
	return rc;
}

/* ---- extract ---------------------------------------------------------------------------------------------- */

static struct {
	int fd;
	size_t off, len;
	unsigned char b[CHUNK];
} in;

static const char *target_dir;
static int root; /* its fd */
static int owners; /* chown entries to the archive's ids */
static const char *old_name, *new_name;

/* What extended headers ('x', 'L', 'K') say about the next entry. */
enum { HAS_SIZE = 1, HAS_UID = 2, HAS_GID = 4, HAS_MTIME = 8 };
static struct {
	char *path, *link;
	int has;
	int64_t size, uid, gid, mtime;
	long mtime_ns;
} ext;

/* Directories whose mode, owner and mtime are set at the end (after their contents). */
static struct dir_attr {
	char *path;
	int64_t mode, uid, gid, mtime;
	long ns;
} *dirs;
static size_t ndirs;

/* n bytes of the archive into p (NULL: skipped over). */
static int get(void *p, uint64_t n)
{
	for (unsigned char *c = p; n;) {
		if (in.off == in.len) {
			ssize_t r = read(in.fd, in.b, sizeof(in.b));
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0)
				return say("reading the archive: %s", strerror(errno));
			if (r == 0)
				return say("truncated archive");
			in.off = 0, in.len = (size_t)r;
		}
		size_t k = n < in.len - in.off ? (size_t)n : in.len - in.off;
		if (c)
			memcpy(c, in.b + in.off, k), c += k;
		in.off += k, n -= k;
	}
	return 0;
}

static int skip_data(uint64_t size)
{
	return get(NULL, size + (BLK - size % BLK) % BLK);
}

/* A numeric header field: octal (ustar) or base-256 (GNU, two's complement after the marker bit); -1 if bad. */
static int number(const unsigned char *f, size_t width, int64_t *v)
{
	uint64_t u = 0;
	size_t i = 0;
	if (f[0] & 0x80) {
		u = (f[0] & 0x40 ? UINT64_MAX << 7 : 0) | (f[0] & 0x7f);
		for (i = 1; i < width; i++) {
			if ((int64_t)u >> 55 != 0 && (int64_t)u >> 55 != -1)
				return -1;
			u = u << 8 | f[i];
		}
		*v = (int64_t)u;
		return 0;
	}
	while (i < width && f[i] == ' ')
		i++;
	for (; i < width && f[i] >= '0' && f[i] <= '7'; i++) {
		if (u >> 60)
			return -1;
		u = u << 3 | (uint64_t)(f[i] - '0');
	}
	for (; i < width; i++)
		if (f[i] != ' ' && f[i] != 0)
			return -1;
	*v = (int64_t)u;
	return 0;
}

/* A PAX decimal: digits; a sign and a fraction (mtime) only where `ns` is given. */
static int decimal(const char *s, int64_t *v, long *ns)
{
	int neg = ns && *s == '-';
	uint64_t u = 0;
	long frac = 0;
	s += neg;
	if (*s < '0' || *s > '9')
		return -1;
	for (; *s >= '0' && *s <= '9'; s++) {
		if (u > (uint64_t)INT64_MAX / 10)
			return -1;
		u = u * 10 + (uint64_t)(*s - '0');
	}
	if (ns && *s == '.') {
		int d = 0;
		for (s++; *s >= '0' && *s <= '9'; s++, d++)
			if (d < 9)
				frac = frac * 10 + (*s - '0');
		for (; d < 9; d++)
			frac *= 10;
	}
	if (*s || u > (uint64_t)INT64_MAX)
		return -1;
	*v = neg ? -(int64_t)u : (int64_t)u;
	if (neg && frac) /* -1.5: 1.5 s before the epoch */
		*v -= 1, frac = 1000000000L - frac;
	if (ns)
		*ns = frac;
	return 0;
}

/* The data of an extended header, NUL-terminated (malloc'd). */
static char *get_text(int64_t size, size_t max)
{
	if (size < 0 || (uint64_t)size > max)
		return say("extended header of %lld bytes is too large", (long long)size), NULL;
	char *p = malloc((size_t)size + 1);
	if (!p)
		return say("out of memory"), NULL;
	if (get(p, (uint64_t)size) || get(NULL, (BLK - (uint64_t)size % BLK) % BLK))
		return free(p), NULL;
	p[size] = 0;
	return p;
}

static int set_text(char **slot, const char *val)
{
	free(*slot);
	if (!(*slot = strdup(val)))
		return say("out of memory");
	return 0;
}

static int pax_parse(char *p, size_t n)
{
	while (n) {
		char *end;
		if (*p < '0' || *p > '9')
			return say("malformed PAX record");
		unsigned long long len = strtoull(p, &end, 10);
		if (*end != ' ' || len > n || len < (size_t)(end - p) + 3 || p[len - 1] != '\n')
			return say("malformed PAX record");
		char *key = end + 1, *eq = memchr(key, '=', (size_t)(p + len - 1 - key));
		if (!eq)
			return say("malformed PAX record");
		*eq = 0, p[len - 1] = 0;
		const char *val = eq + 1;
		int bad = 0;
		if (strcmp(key, "path") == 0)
			bad = set_text(&ext.path, val);
		else if (strcmp(key, "linkpath") == 0)
			bad = set_text(&ext.link, val);
		else if (strcmp(key, "size") == 0)
			bad = decimal(val, &ext.size, NULL) < 0, ext.has |= HAS_SIZE;
		else if (strcmp(key, "uid") == 0)
			bad = decimal(val, &ext.uid, NULL) < 0, ext.has |= HAS_UID;
		else if (strcmp(key, "gid") == 0)
			bad = decimal(val, &ext.gid, NULL) < 0, ext.has |= HAS_GID;
		else if (strcmp(key, "mtime") == 0)
			bad = decimal(val, &ext.mtime, &ext.mtime_ns) < 0, ext.has |= HAS_MTIME;
		if (bad)
			return say("bad PAX value %s=%.64s", key, val);
		p += len, n -= len;
	}
	return 0;
}

/*
 * `name` without empty and "." components, `old_name` as its first component replaced by `new_name` (malloc'd;
 * "" for the root). NULL with a message if it is absolute or has a ".." component.
 */
static char *clean(const char *name, const char *what)
{
	size_t n = strlen(name), extra = new_name ? strlen(new_name) : 0;
	if (name[0] == '/')
		return say("%s is absolute", what), NULL;
	if (n > TAR_MAX_NAME)
		return say("%s is over %d bytes", what, TAR_MAX_NAME), NULL;
	char *o = malloc(n + extra + 2), *w = o;
	if (!o)
		return say("out of memory"), NULL;
	for (const char *p = name; *p; p += *p == '/') {
		size_t k = strcspn(p, "/");
		if (k == 2 && p[0] == '.' && p[1] == '.')
			return free(o), say("%s has a .. component", what), NULL;
		if (k && !(k == 1 && p[0] == '.')) {
			if (w != o)
				*w++ = '/';
			if (w == o && old_name && strlen(old_name) == k && memcmp(p, old_name, k) == 0)
				memcpy(w, new_name, extra), w += extra;
			else
				memcpy(w, p, k), w += k;
		}
		p += k;
	}
	*w = 0;
	return o;
}

/*
 * The directory holding the last component of `path`, reached from the root one component at a time with
 * O_NOFOLLOW (missing ones made 0755 when `create`); *base: that last component. -1 with a message.
 */
static int parent_of(char *path, int create, const char **base)
{
	int fd = fcntl(root, F_DUPFD_CLOEXEC, 0);
	char *p = path, *slash;
	if (fd < 0)
		return sayerr(), -1;
	while ((slash = strchr(p, '/'))) {
		*slash = 0;
		int next = openat(fd, p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (next < 0 && errno == ENOENT && create && (mkdirat(fd, p, 0755) == 0 || errno == EEXIST))
			next = openat(fd, p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		int err = errno, len = (int)(slash - path);
		*slash = '/';
		if (next < 0 && (err == ENOTDIR || err == ELOOP))
			say("%.*s is a symlink or not a directory", len, path);
		else if (next < 0)
			say("%.*s: %s", len, path, strerror(err));
		close(fd);
		if ((fd = next) < 0)
			return -1;
		p = slash + 1;
	}
	*base = p;
	return fd;
}

/* Makes room for a new non-directory: an existing one goes, a directory is an error. */
static int make_room(int dfd, const char *base)
{
	struct stat st;
	if (fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : sayerr();
	if (S_ISDIR(st.st_mode))
		return say("a directory is in the way");
	return unlinkat(dfd, base, 0) < 0 ? sayerr() : 0;
}

struct entry {
	const char *name, *link;
	char type;
	int64_t mode, uid, gid, size, mtime, major, minor;
	long mtime_ns;
};

static int hard_link(const struct entry *e, int dfd, const char *base, const char *path)
{
	struct stat st;
	const char *tbase;
	char *target = clean(e->link, "hard link target");
	int rc = 1, tfd = -1;
	if (!target)
		return 1;
	if (!*target || strcmp(target, path) == 0) {
		rc = *target ? 0 : say("hard link to the root");
		goto out;
	}
	if ((tfd = parent_of(target, 0, &tbase)) < 0)
		goto out;
	if (fstatat(tfd, tbase, &st, AT_SYMLINK_NOFOLLOW) < 0)
		rc = say("hard link target %s: %s", target, strerror(errno));
	else if (S_ISDIR(st.st_mode))
		rc = say("hard link to the directory %s", target);
	else if (!(rc = make_room(dfd, base)) && linkat(tfd, tbase, dfd, base, 0) < 0)
		rc = sayerr();
out:
	if (tfd >= 0)
		close(tfd);
	free(target);
	return rc;
}

static int regular(const struct entry *e, int dfd, const char *base, const struct timespec *ts)
{
	int rc, fd;
	size_t k;
	if (make_room(dfd, base))
		return 1;
	if ((fd = openat(dfd, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600)) < 0)
		return sayerr();
	rc = 0;
	for (uint64_t left = (uint64_t)e->size; left && !rc; left -= k) {
		k = left < CHUNK ? left : CHUNK;
		rc = get(buf, k) || (write_full(fd, buf, k) < 0 && sayerr());
	}
	if (rc) { /* no part of a file is left as if it were all */
		close(fd);
		unlinkat(dfd, base, 0);
		return 1;
	}
	rc = get(NULL, (BLK - (uint64_t)e->size % BLK) % BLK);
	if (!rc && ((owners && fchown(fd, (uid_t)e->uid, (gid_t)e->gid) < 0) || fchmod(fd, e->mode & 07777) < 0 ||
		    futimens(fd, ts) < 0))
		rc = sayerr();
	close(fd);
	return rc;
}

/* A symlink, fifo or device node: made, then its owner and mtime (never following it). */
static int special(const struct entry *e, int dfd, const char *base, const struct timespec *ts)
{
	int rc;
	if (make_room(dfd, base))
		return 1;
	if (e->type == '2')
		rc = symlinkat(e->link, dfd, base);
	else if (e->type == '6')
		rc = mkfifoat(dfd, base, e->mode & 07777);
	else
		rc = mknodat(dfd, base, (e->type == '3' ? S_IFCHR : S_IFBLK) | (e->mode & 07777),
			     makedev((unsigned)e->major, (unsigned)e->minor));
	if (rc < 0 || (owners && fchownat(dfd, base, (uid_t)e->uid, (gid_t)e->gid, AT_SYMLINK_NOFOLLOW) < 0) ||
	    utimensat(dfd, base, ts, AT_SYMLINK_NOFOLLOW) < 0)
		return sayerr();
	return 0;
}

static int directory(const struct entry *e, int dfd, const char *base, char *path)
{
	struct stat st;
	if (mkdirat(dfd, base, 0700 | (e->mode & 0777)) < 0) {
		if (errno != EEXIST || fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0)
			return sayerr();
		if (!S_ISDIR(st.st_mode))
			return say("exists and is not a directory");
	}
	struct dir_attr *more = realloc(dirs, (ndirs + 1) * sizeof(*dirs));
	if (!more)
		return say("out of memory");
	dirs = more;
	dirs[ndirs++] = (struct dir_attr){path, e->mode & 07777, e->uid, e->gid, e->mtime, e->mtime_ns};
	return 0;
}

static int extract_entry(const struct entry *e)
{
	const char *base;
	char *path = clean(e->name, "name");
	int rc = 1, dfd = -1, kept = 0;
	struct timespec ts[2] = {{.tv_sec = (time_t)e->mtime, .tv_nsec = e->mtime_ns}, {0}};
	ts[1] = ts[0];
	if (!path)
		return 1;
	cur = path;
	if (e->uid < 0 || e->uid > (int64_t)UINT32_MAX - 1 || e->gid < 0 || e->gid > (int64_t)UINT32_MAX - 1) {
		rc = say("uid or gid out of range");
		goto out;
	}
	if (!*path) { /* the root entry: DIR stays as it is */
		rc = e->type == '0' || e->type == '7' ? skip_data((uint64_t)e->size) : 0;
		goto out;
	}
	if ((dfd = parent_of(path, 1, &base)) < 0)
		goto out;
	switch (e->type) {
	case '0':
	case '7':
		rc = regular(e, dfd, base, ts);
		break;
	case '1':
		rc = hard_link(e, dfd, base, path);
		break;
	case '2':
	case '3':
	case '4':
	case '6':
		rc = special(e, dfd, base, ts);
		break;
	case '5':
		rc = directory(e, dfd, base, path);
		kept = !rc;
		break;
	default:
		rc = say("unsupported entry type '%c'", e->type);
	}
out:
	if (dfd >= 0)
		close(dfd);
	if (!kept)
		free(path);
	cur = target_dir;
	return rc;
}

/* The directories' own attributes, deepest (latest) first, so their contents no longer change them. */
static int finish_dirs(void)
{
	int rc = 0;
	while (ndirs && !rc) {
		struct dir_attr *d = &dirs[--ndirs];
		const char *base;
		struct timespec ts[2] = {{.tv_sec = (time_t)d->mtime, .tv_nsec = d->ns}, {0}};
		int pfd, fd = -1;
		ts[1] = ts[0];
		cur = d->path;
		if ((pfd = parent_of(d->path, 0, &base)) < 0)
			rc = 1;
		else if ((fd = openat(pfd, base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0 ||
			 (owners && fchown(fd, (uid_t)d->uid, (gid_t)d->gid) < 0) || fchmod(fd, (mode_t)d->mode) < 0 ||
			 futimens(fd, ts) < 0)
			rc = sayerr();
		if (fd >= 0)
			close(fd);
		if (pfd >= 0)
			close(pfd);
		free(d->path);
		cur = target_dir;
	}
	return rc;
}

/* A header's checksum: the sum of its bytes with the field as spaces (unsigned, or as old tars did, signed). */
static int checksum_ok(const unsigned char *h)
{
	int64_t want;
	long usum = 0, ssum = 0;
	for (int i = 0; i < BLK; i++) {
		unsigned char c = i >= 148 && i < 156 ? ' ' : h[i];
		usum += c, ssum += (signed char)c;
	}
	return number(h + 148, 8, &want) == 0 && (want == usum || want == ssum);
}

/* A NUL-terminated copy of a header text field (at most `width` bytes). */
static void field(char *to, const unsigned char *f, size_t width)
{
	size_t n = strnlen((const char *)f, width);
	memcpy(to, f, n);
	to[n] = 0;
}

static int extract_all(void)
{
	static const unsigned char zero[BLK];
	unsigned char h[BLK];
	char hname[257], hlink[101];
	for (;;) {
		struct entry e = {0};
		int64_t cksum;
		cur = target_dir;
		if (get(h, BLK))
			return 1;
		if (memcmp(h, zero, BLK) == 0)
			return 0;
		field(hname, h, 100);
		cur = hname;
		if (!checksum_ok(h))
			return say("bad header checksum");
		if (number(h + 100, 8, &e.mode) || number(h + 108, 8, &e.uid) || number(h + 116, 8, &e.gid) ||
		    number(h + 124, 12, &e.size) || number(h + 136, 12, &e.mtime) || number(h + 148, 8, &cksum) ||
		    e.size < 0)
			return say("bad numeric field in the header");
		e.type = (char)h[156];
		if (e.type == 'x' || e.type == 'L' || e.type == 'K' || e.type == 'g') {
			char *text = get_text(e.size, e.type == 'x' || e.type == 'g' ? PAX_MAX : TAR_MAX_NAME);
			int rc = !text;
			char **slot = e.type == 'L' ? &ext.path : e.type == 'K' ? &ext.link : NULL;
			if (text && e.type == 'x')
				rc = pax_parse(text, (size_t)e.size);
			if (text && slot) /* GNU long name or link target */
				free(*slot), *slot = text, text = NULL;
			free(text);
			if (rc)
				return 1;
			continue;
		}
		if (memcmp(h + 257, "ustar\0", 6) == 0 && h[345]) { /* POSIX ustar: prefix "/" name */
			field(hname, h + 345, 155);
			size_t n = strlen(hname);
			hname[n] = '/';
			field(hname + n + 1, h, 100);
		}
		field(hlink, h + 157, 100);
		if (number(h + 329, 8, &e.major) || number(h + 337, 8, &e.minor))
			e.major = e.minor = 0;
		e.name = ext.path ? ext.path : hname;
		e.link = ext.link ? ext.link : hlink;
		if (ext.has & HAS_SIZE)
			e.size = ext.size;
		if (ext.has & HAS_UID)
			e.uid = ext.uid;
		if (ext.has & HAS_GID)
			e.gid = ext.gid;
		if (ext.has & HAS_MTIME)
			e.mtime = ext.mtime, e.mtime_ns = ext.mtime_ns;
		if (e.type == 0)
			e.type = '0';
		size_t n = strlen(e.name);
		if (e.type == '0' && n && e.name[n - 1] == '/') /* pre-POSIX tars: a directory */
			e.type = '5';
		int rc = extract_entry(&e);
		free(ext.path), free(ext.link);
		memset(&ext, 0, sizeof(ext));
		if (rc)
			return 1;
	}
}

int tar_extract(int fd, const char *dir, int chown_them, const char *old, const char *new)
{
	int rc;
	tool = "extract", cur = target_dir = dir;
	in.fd = fd, in.off = in.len = 0;
	owners = chown_them, old_name = old, new_name = new;
	if (dir[0] != '/')
		return say("not an absolute path");
	if (old && (!*old || strchr(old, '/') || strcmp(old, ".") == 0 || strcmp(old, "..") == 0 ||
		    !path_is_clean_relative(new)))
		return say("cannot rename %s to %s: each must be a clean relative name", old, new);
	if ((root = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
		return sayerr();
	mode_t mask = umask(0); /* modes as the archive has them */
	rc = extract_all();
	if (!rc)
		rc = finish_dirs();
	while (ndirs)
		free(dirs[--ndirs].path);
	free(dirs), dirs = NULL;
	free(ext.path), free(ext.link);
	memset(&ext, 0, sizeof(ext));
	umask(mask);
	close(root);
	while (!rc && read(fd, buf, sizeof(buf)) > 0) /* the rest (the writer's padding): read, so it never blocks */
		;
	return rc;
}
