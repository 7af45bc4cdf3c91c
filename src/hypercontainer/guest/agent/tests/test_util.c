/*
 * util.c's find_executable(): execvp's PATH search, done before a held container's START, against a directory
 * tree of the test's own.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "util.h"

static void touch(const char *dir, const char *name, mode_t mode)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
	CHECK(fd >= 0);
	if (fd >= 0)
		close(fd);
	chmod(path, mode);
}

int main(void)
{
	char tmp[] = "/tmp/hc-test-util-XXXXXX", a[600], b[600], path[1300], out[4096], want[700];
	CHECK(mkdtemp(tmp) != NULL);
	snprintf(a, sizeof(a), "%s/a", tmp);
	snprintf(b, sizeof(b), "%s/b", tmp);
	CHECK(mkdir(a, 0755) == 0 && mkdir(b, 0755) == 0);
	touch(a, "tool", 0755);
	touch(b, "tool", 0755);
	touch(a, "data", 0644);
	touch(b, "only-b", 0755);
	CHECK(mkdir(strcat(strcpy(path, a), "/dir"), 0755) == 0);

	snprintf(path, sizeof(path), "/no/such:%s:%s", a, b);
	CHECK(find_executable("tool", path, out, sizeof(out)) == 1); /* the first directory that has it */
	snprintf(want, sizeof(want), "%s/tool", a);
	CHECK(strcmp(out, want) == 0);
	CHECK(find_executable("only-b", path, out, sizeof(out)) == 1);
	snprintf(want, sizeof(want), "%s/only-b", b);
	CHECK(strcmp(out, want) == 0);

	errno = 0;
	CHECK(find_executable("missing", path, out, sizeof(out)) == -1 && errno == ENOENT);
	errno = 0; /* a file without an execute bit, a directory: found, cannot run (EACCES, as execvp says) */
	CHECK(find_executable("data", path, out, sizeof(out)) == -1 && errno == EACCES);
	errno = 0;
	CHECK(find_executable("dir", path, out, sizeof(out)) == -1 && errno == EACCES);
	errno = 0;
	CHECK(find_executable("", path, out, sizeof(out)) == -1 && errno == ENOENT);

	CHECK(find_executable("./tool", path, out, sizeof(out)) == 0); /* a path: no search (execvp runs it) */
	CHECK(find_executable("tool", NULL, out, sizeof(out)) == 0);	     /* no PATH: execvp's default */
	CHECK(find_executable("tool", path, out, 8) == 0);	     /* too long for `out`: left to execvp */

	char cwd[600]; /* an empty PATH entry is the working directory */
	CHECK(getcwd(cwd, sizeof(cwd)) != NULL);
	CHECK(chdir(b) == 0);
	CHECK(find_executable("only-b", "/no/such::/no/other", out, sizeof(out)) == 1 && strcmp(out, "only-b") == 0);
	CHECK(chdir(cwd) == 0);

	char rm[700];
	snprintf(rm, sizeof(rm), "rm -rf %s", tmp);
	CHECK(system(rm) == 0);
	printf("test_util: %s\n", failures ? "FAILED" : "ok");
	return failures != 0;
}
