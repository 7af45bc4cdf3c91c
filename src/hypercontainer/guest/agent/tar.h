/* The tar format of the archive and extract builtins (docs/protocol.md, "Builtins"). */
#ifndef HC_TAR_H
#define HC_TAR_H

#define TAR_MAX_DEPTH 200   /* directory levels below the archived path */
#define TAR_MAX_NAME 65536  /* bytes of an entry name or link target */

/*
 * Writes a POSIX tar of `path` (absolute) to `out`: 0, or 1 with one line on stderr. A final symlink is archived
 * as itself unless `path` ends in "/" or "/."; "DIR/." archives DIR's contents, named relative to it.
 */
int tar_archive(int out, const char *path);

/*
 * Extracts the tar read from `in` under `dir` (absolute, a directory), never writing through a symlink: 0, or 1
 * with one line on stderr. owners: entries get the archive's uid/gid (else they stay the caller's). With `old`,
 * an entry whose first component is `old` has it replaced by `new`.
 */
int tar_extract(int in, const char *dir, int owners, const char *old, const char *new);

#endif
