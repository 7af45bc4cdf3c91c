/*
 * The archive and extract builtins on a tree of the test's own: a round trip (long names, symlinks, a hard link, a
 * fifo, modes, owners when root, mtimes), "DIR/." and the OLD NEW rename; archives made by hand that extract must
 * refuse (absolute and ".." names, writing through a symlink, hard links out of DIR or to a directory, truncated,
 * bad checksum) with nothing written outside; GNU long names and base-256 numbers; the builtin table.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "builtin.h"
#include "tar.h"

static char top[256]; /* the test's directory */

static char *at(const char *rel)
{
	static char paths[8][4096];
	static int next;
	char *p = paths[next++ % 8];
	snprintf(p, 4096, "%s/%s", top, rel);
	return p;
}

static void put_file(const char *rel, const char *text, mode_t mode)
{
	int fd = open(at(rel), O_WRONLY | O_CREAT | O_TRUNC, 0600);
	CHECK(fd >= 0 && write(fd, text, strlen(text)) == (ssize_t)strlen(text));
	close(fd);
	chmod(at(rel), mode);
}

static int archive_to(const char *path, const char *file)
{
	int fd = open(at(file), O_WRONLY | O_CREAT | O_TRUNC, 0600);
	int rc = tar_archive(fd, path);
	close(fd);
	return rc;
}

static int extract_from(const char *file, const char *dir, int owners, const char *old, const char *new)
{
	int fd = open(at(file), O_RDONLY);
	int rc = tar_extract(fd, at(dir), owners, old, new);
	close(fd);
	return rc;
}

static int same_file(const char *a, const char *b)
{
	struct stat x, y;
	if (lstat(at(a), &x) < 0 || lstat(at(b), &y) < 0)
		return 0;
	int same = x.st_mode == y.st_mode && x.st_mtime == y.st_mtime &&
		   (S_ISDIR(x.st_mode) || S_ISLNK(x.st_mode) || x.st_size == y.st_size) &&
		   (geteuid() != 0 || (x.st_uid == y.st_uid && x.st_gid == y.st_gid));
	if (!same)
		printf("     %s and %s differ: mode %o %o, size %lld %lld, mtime %lld %lld, owner %u %u\n", a, b,
		       x.st_mode, y.st_mode, (long long)x.st_size, (long long)y.st_size, (long long)x.st_mtime,
		       (long long)y.st_mtime, x.st_uid, y.st_uid);
	return same;
}

static int exists(const char *rel)
{
	struct stat st;
	return lstat(at(rel), &st) == 0;
}

static char long_dir[200], long_file[400];

static void make_tree(void)
{
	struct timespec ts[2] = {{1000000000, 0}, {1000000000, 0}};
	char target[256];
	memset(long_dir, 'd', 150);
	snprintf(long_file, sizeof(long_file), "src/a/%s/%0120d", long_dir, 7);
	mkdir(at("src"), 0755);
	mkdir(at("src/a"), 0750);
	mkdir(at("src/a/sub"), 0700);
	snprintf(target, sizeof(target), "src/a/%s", long_dir);
	mkdir(at(target), 0755);
	put_file("src/a/file", "hello\n", 0640);
	put_file("src/a/sub/exec", "#!/bin/sh\n", 04755);
	put_file(long_file, "long\n", 0600);
	put_file("src/a/empty", "", 0444);
	CHECK(symlink("file", at("src/a/link")) == 0);
	CHECK(symlink("/etc/passwd", at("src/a/abs")) == 0);
	char long_target[300];
	memset(long_target, 't', 250);
	long_target[250] = 0;
	CHECK(symlink(long_target, at("src/a/sub/longlink")) == 0);
	CHECK(link(at("src/a/file"), at("src/a/sub/hard")) == 0);
	CHECK(mkfifo(at("src/a/fifo"), 0620) == 0);
	if (geteuid() == 0)
		CHECK(chown(at("src/a/file"), 1234, 5678) == 0 && lchown(at("src/a/link"), 42, 43) == 0);
	utimensat(AT_FDCWD, at("src/a/file"), ts, 0);
	utimensat(AT_FDCWD, at("src/a/link"), ts, AT_SYMLINK_NOFOLLOW);
	utimensat(AT_FDCWD, at("src/a/sub"), ts, 0);
}

static void round_trip(void)
{
	struct stat a, b;
	char buf[64], path[512];
	CHECK(archive_to(at("src/a"), "a.tar") == 0);
	mkdir(at("dst"), 0755);
	CHECK(extract_from("a.tar", "dst", 1, NULL, NULL) == 0);
	static const char *names[] = {"a", "a/file", "a/sub", "a/sub/exec", "a/empty", "a/link", "a/abs",
				      "a/sub/longlink", "a/sub/hard", "a/fifo"};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char s[64], d[64];
		snprintf(s, sizeof(s), "src/%s", names[i]);
		snprintf(d, sizeof(d), "dst/%s", names[i]);
		CHECK(same_file(s, d));
	}
	snprintf(path, sizeof(path), "dst/%s", long_file + 4);
	CHECK(same_file(long_file, path));
	CHECK(readlink(at("dst/a/link"), buf, sizeof(buf)) == 4 && memcmp(buf, "file", 4) == 0);
	CHECK(readlink(at("dst/a/abs"), buf, sizeof(buf)) == 11);
	CHECK(readlink(at("dst/a/sub/longlink"), path, sizeof(path)) == 250);
	CHECK(stat(at("dst/a/file"), &a) == 0 && stat(at("dst/a/sub/hard"), &b) == 0 && a.st_ino == b.st_ino);
	int fd = open(at("dst/a/file"), O_RDONLY);
	CHECK(fd >= 0 && read(fd, buf, sizeof(buf)) == 6 && memcmp(buf, "hello\n", 6) == 0);
	close(fd);

	/* Again over what is there: files replaced, directories kept. */
	CHECK(extract_from("a.tar", "dst", 1, NULL, NULL) == 0 && same_file("src/a/file", "dst/a/file"));

	/* OLD NEW: a to b. */
	mkdir(at("ren"), 0755);
	CHECK(extract_from("a.tar", "ren", 0, "a", "b") == 0);
	CHECK(!exists("ren/a") && exists("ren/b/file") && exists("ren/b/sub/hard"));
	CHECK(stat(at("ren/b/file"), &a) == 0 && stat(at("ren/b/sub/hard"), &b) == 0 && a.st_ino == b.st_ino);
	CHECK(a.st_uid == geteuid()); /* owners 0: the extractor's */

	/* DIR/.: the contents, no entry for DIR itself; a trailing "/" follows a final symlink. */
	CHECK(archive_to(at("src/a/."), "dot.tar") == 0);
	mkdir(at("dot"), 0755);
	CHECK(extract_from("dot.tar", "dot", 1, NULL, NULL) == 0);
	CHECK(exists("dot/file") && exists("dot/sub/exec") && !exists("dot/a"));
	CHECK(symlink("src/a", at("toa")) == 0);
	CHECK(archive_to(at("toa"), "l.tar") == 0);
	mkdir(at("l"), 0755);
	CHECK(extract_from("l.tar", "l", 1, NULL, NULL) == 0);
	CHECK(readlink(at("l/toa"), buf, sizeof(buf)) == 5);
	CHECK(archive_to(at("toa/"), "l2.tar") == 0);
	mkdir(at("l2"), 0755);
	CHECK(extract_from("l2.tar", "l2", 1, NULL, NULL) == 0 && same_file("src/a/file", "l2/toa/file"));
	CHECK(extract_from("l2.tar", "l", 1, NULL, NULL) == 1); /* l/toa is a symlink: not a directory to fill */
	CHECK(archive_to("relative/path", "x.tar") == 1 && archive_to(at("no-such"), "x.tar") == 1);
	CHECK(archive_to(at("src/a/file/"), "x.tar") == 1); /* ENOTDIR */
}

/* ---- hand-made archives ----------------------------------------------------------------------------------- */

static unsigned char tarbuf[1 << 16];
static size_t tarlen;

static void hdr(const char *name, char type, unsigned long long size, const char *link)
{
	unsigned char *h = tarbuf + tarlen;
	unsigned sum = 0;
	memset(h, 0, 512);
	memcpy(h, name, strlen(name) < 100 ? strlen(name) : 100);
	snprintf((char *)h + 100, 8, "%07o", 0644);
	snprintf((char *)h + 108, 8, "%07o", 0);
	snprintf((char *)h + 116, 8, "%07o", 0);
	snprintf((char *)h + 124, 12, "%011llo", size);
	snprintf((char *)h + 136, 12, "%011o", 1000000000);
	h[156] = (unsigned char)type;
	if (link)
		memcpy(h + 157, link, strlen(link));
	memcpy(h + 257, "ustar\0" "00", 8);
	memset(h + 148, ' ', 8);
	for (int i = 0; i < 512; i++)
		sum += h[i];
	snprintf((char *)h + 148, 7, "%06o", sum);
	tarlen += 512;
}

static void data(const char *text)
{
	size_t n = strlen(text);
	memcpy(tarbuf + tarlen, text, n);
	tarlen += (n + 511) / 512 * 512;
}

static void end(void)
{
	memset(tarbuf + tarlen, 0, 1024);
	tarlen += 1024;
}

/* The hand-made archive into a fresh directory `dir`: the extractor's status. */
static int extract_made(const char *dir)
{
	int fd = open(at("made.tar"), O_WRONLY | O_CREAT | O_TRUNC, 0600);
	CHECK(write(fd, tarbuf, tarlen) == (ssize_t)tarlen);
	close(fd);
	mkdir(at(dir), 0755);
	int rc = extract_from("made.tar", dir, 1, NULL, NULL);
	tarlen = 0;
	memset(tarbuf, 0, sizeof(tarbuf));
	return rc;
}

static void hostile(void)
{
	char abs[512];
	mkdir(at("outside"), 0755);
	put_file("outside/secret", "secret\n", 0600);

	snprintf(abs, sizeof(abs), "%s/outside/abs", top);
	hdr(abs, '0', 3, NULL), data("bad"), end();
	CHECK(extract_made("h1") == 1 && !exists("outside/abs"));

	hdr("../outside/dotdot", '0', 3, NULL), data("bad"), end();
	CHECK(extract_made("h2") == 1 && !exists("outside/dotdot"));

	hdr("ok/../../outside/dotdot2", '0', 3, NULL), data("bad"), end();
	CHECK(extract_made("h2b") == 1 && !exists("outside/dotdot2"));

	/* A symlink out, then a file through it: refused. Also a symlink placed before by someone else. */
	hdr("esc", '2', 0, "../outside"), hdr("esc/through", '0', 3, NULL), data("bad"), end();
	CHECK(extract_made("h3") == 1 && !exists("outside/through") && exists("h3/esc"));
	hdr("esc/deeper/through", '0', 3, NULL), data("bad"), end();
	CHECK(extract_made("h3") == 1 && !exists("outside/deeper"));

	/* The final component a symlink out: the symlink is replaced, the outside file untouched. */
	mkdir(at("h4"), 0755);
	CHECK(symlink(at("outside/secret"), at("h4/victim")) == 0);
	hdr("victim", '0', 3, NULL), data("new"), end();
	CHECK(extract_made("h4") == 0);
	struct stat st;
	CHECK(lstat(at("h4/victim"), &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 3);
	CHECK(stat(at("outside/secret"), &st) == 0 && st.st_size == 7);

	hdr("h", '1', 0, "../outside/secret"), end();
	CHECK(extract_made("h5") == 1 && !exists("h5/h"));
	hdr("h", '1', 0, abs), end();
	CHECK(extract_made("h6") == 1 && !exists("h6/h"));
	hdr("d/", '5', 0, NULL), hdr("h", '1', 0, "d"), end();
	CHECK(extract_made("h7") == 1 && !exists("h7/h"));
	/* Through a symlink inside DIR to the outside: refused too. */
	hdr("esc", '2', 0, "../outside"), hdr("h", '1', 0, "esc/secret"), end();
	CHECK(extract_made("h8") == 1 && !exists("h8/h"));
	hdr("f", '0', 2, NULL), data("ok"), hdr("h", '1', 0, "./f"), end();
	CHECK(extract_made("h9") == 0 && exists("h9/h"));

	/* A directory over a file, a file over a directory. */
	hdr("f", '0', 2, NULL), data("ok"), hdr("f/", '5', 0, NULL), end();
	CHECK(extract_made("h10") == 1);
	hdr("d/", '5', 0, NULL), hdr("d", '0', 2, NULL), data("ok"), end();
	CHECK(extract_made("h11") == 1);

	/* Truncated data, no end blocks, a bad checksum, an empty input. */
	hdr("f", '0', 2000, NULL), data("short");
	CHECK(extract_made("h12") == 1);
	hdr("f", '0', 2, NULL), data("ok");
	CHECK(extract_made("h13") == 1);
	hdr("f", '0', 2, NULL), data("ok"), end();
	tarbuf[10] ^= 1;
	CHECK(extract_made("h14") == 1 && !exists("h14/f"));
	CHECK(extract_made("h15") == 1);

	/* GNU long name, base-256 size; "./" names; the root entry "." leaves DIR alone. */
	char longname[300];
	memset(longname, 'n', 299);
	longname[150] = '/', longname[299] = 0;
	hdr("./", '5', 0, NULL);
	hdr("././@LongLink", 'L', 300, NULL), memcpy(tarbuf + tarlen, longname, 300), tarlen += 512;
	hdr("ignored", '0', 0, NULL);
	tarbuf[tarlen - 512 + 124] = 0x80; /* base-256: 3 */
	memset(tarbuf + tarlen - 512 + 125, 0, 10);
	tarbuf[tarlen - 512 + 135] = 3;
	unsigned sum = 0;
	memset(tarbuf + tarlen - 512 + 148, ' ', 8);
	for (int i = 0; i < 512; i++)
		sum += tarbuf[tarlen - 512 + i];
	snprintf((char *)tarbuf + tarlen - 512 + 148, 7, "%06o", sum);
	data("abc"), end();
	CHECK(extract_made("h16") == 0);
	char path[400];
	snprintf(path, sizeof(path), "h16/%s", longname);
	CHECK(stat(at(path), &st) == 0 && st.st_size == 3 && stat(at("h16"), &st) == 0 && (st.st_mode & 0777) == 0755);
}

/* More than TAR_MAX_DEPTH directory levels: an error, not a crash or a truncated archive passed off as whole. */
static void too_deep(void)
{
	char path[1024] = "deep";
	mkdir(at(path), 0755);
	for (int i = 0; i < TAR_MAX_DEPTH + 5; i++) {
		strcat(path, "/d");
		CHECK(mkdir(at(path), 0755) == 0);
		if (i == 50)
			CHECK(archive_to(at("deep"), "deep.tar") == 0);
	}
	CHECK(archive_to(at("deep"), "deep.tar") == 1);
}

int main(void)
{
	snprintf(top, sizeof(top), "/tmp/hc-test-builtin-XXXXXX");
	if (!mkdtemp(top)) {
		perror("mkdtemp");
		return 2;
	}
	make_tree();
	round_trip();
	hostile();
	too_deep();
	CHECK(builtin_find("archive") && builtin_find("extract") && builtin_find("stat") && builtin_find("ps"));
	CHECK(!builtin_find("sh") && !builtin_find(""));
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", top);
	if (!failures && system(cmd) != 0)
		printf("could not remove %s\n", top);
	printf("test_builtin: %s\n", failures ? "FAILED" : "ok");
	return failures != 0;
}
