/*
 * tar.c's tar_extract (the extract builtin: `hyperctl cp` into a container) on any archive, as root, into a fresh
 * directory beside a sibling that must stay untouched (and a symlink to it inside the destination); with owners
 * and the OLD NEW rename. Nothing may be created outside the destination.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tar.h"

static char base[64];

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	if (remove(p) != 0) {
		chmod(p, 0700);
		(void)remove(p);
	}
	return 0;
}

/* The names in `dir` other than "." and ".." and `except`: 0 if there are none. */
static int others_in(const char *dir, const char *except)
{
	DIR *d = opendir(dir);
	if (!d)
		abort();
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..") && strcmp(de->d_name, except))
			n++;
	closedir(d);
	return n;
}

static void remove_base(void) /* at exit: the run's scratch directory goes with it (what a crash left stays) */
{
	nftw(base, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	snprintf(base, sizeof(base), "/tmp/hc-fuzz-tar-XXXXXX");
	if (!mkdtemp(base))
		abort();
	atexit(remove_base);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char top[128], dest[160], outside[160], path[256];
	static unsigned long iter;
	snprintf(top, sizeof(top), "%s/%lu", base, iter++);
	snprintf(dest, sizeof(dest), "%s/dest", top);
	snprintf(outside, sizeof(outside), "%s/outside", top);
	if (mkdir(top, 0700) || mkdir(dest, 0755) || mkdir(outside, 0755))
		abort();
	snprintf(path, sizeof(path), "%s/escape", dest);
	if (symlink(outside, path))
		abort();
	int fd = memfd_create("tar", MFD_CLOEXEC);
	if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size) || lseek(fd, 0, SEEK_SET) != 0)
		abort();
	(void)tar_extract(fd, dest, size & 1, size & 2 ? "a" : NULL, size & 2 ? "b" : NULL);
	close(fd);
	struct stat st;
	/* the sibling is as it was: empty; the destination's link to it is still a link */
	if (rmdir(outside) != 0) {
		fprintf(stdout, "tar_extract wrote outside its directory\n");
		abort();
	}
	if (lstat(path, &st) != 0 || !S_ISLNK(st.st_mode))
		abort();
	if (others_in(top, "dest")) { /* nothing new beside the destination */
		fprintf(stdout, "tar_extract made something beside its directory\n");
		abort();
	}
	nftw(top, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}
