"""Unpacking one layer tar into a fresh directory, refusing anything that could touch the host.

Refused: absolute paths, `..`, writing through a symlink, hardlinks to outside the layer or to missing
files, device nodes (unless allowed), trusted.* xattrs, whiteouts that name `.` or `..`, setuid/setgid files
anyone may write, more bytes than the bomb guard allows (counted from the headers, before anything is written:
a huge sparse file is refused at once). Ordinary setuid files are kept: the store is root-only (0700).

Whiteouts become overlayfs whiteouts (0/0 character devices; opaque directories get trusted.overlay.opaque=y),
so layers stack with a plain overlay mount.

`unpack_into` applies the same rules to `hyperctl cp`'s archives from a container (into an existing directory;
`.wh.` names are plain files there, and ownership is kept only when asked).
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ..errors import ImageError

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
DEFAULT_MAX_BYTES = 32 << 30  # bomb guard: the most a single layer may expand to


def _clean(name: str, what: str, noun: str = "layer") -> PurePosixPath | None:
    """The member path relative to the layer root; None for the root itself."""
    if name.startswith("/"):
        raise ImageError(f"{noun} entry {name!r}: absolute {what} refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"{noun} entry {name!r}: {what} with '..' refused")
    return PurePosixPath(*parts) if parts else None


class _Unpacker:
    def __init__(self, dest: Path, allow_devices: bool, max_bytes: int, *, layer: bool = True,
                 owners: bool = True, rename: tuple[str, str] | None = None) -> None:
        self.dest = dest
        self.allow_devices = allow_devices
        self.budget = max_bytes
        self.max_bytes = max_bytes
        self.layer, self.owners, self.rename = layer, owners, rename
        self.noun = "layer" if layer else "archive"

    def _rel(self, name: str, what: str) -> PurePosixPath | None:
        rel = _clean(name, what, self.noun)
        if rel is not None and self.rename and rel.parts[0] == self.rename[0]:
            rel = PurePosixPath(self.rename[1], *rel.parts[1:])
        return rel

    def _parent_ok(self, rel: PurePosixPath, name: str) -> Path:
        """Creates missing parents as directories; refuses a parent that is not a real directory."""
        cur = self.dest
        for part in rel.parts[:-1]:
            cur = cur / part
            try:
                st = cur.lstat()
            except FileNotFoundError:
                cur.mkdir(mode=0o755)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise ImageError(f"{self.noun} entry {name!r} would be written through the symlink {part!r}")
            if not stat.S_ISDIR(st.st_mode):
                raise ImageError(f"{self.noun} entry {name!r}: parent {part!r} is not a directory")
        return self.dest / rel

    def _clear(self, path: Path, keep_dir: bool) -> None:
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            if not self.layer:  # docker cp's rule: a directory is never replaced by something else
                raise ImageError(f"cannot overwrite the directory {str(path.relative_to(self.dest))!r} with a "
                                 "non-directory")
            import shutil

            shutil.rmtree(path)
        else:
            path.unlink()

    def _charge(self, n: int, name: str) -> None:
        self.budget -= n
        if self.budget < 0:
            raise ImageError(f"{self.noun} expands beyond {self.max_bytes} bytes (at {name!r}): refused as a bomb")

    def run(self, stream: BinaryIO) -> None:
        """Every entry of the uncompressed tar `stream`, in order."""
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tf:
                for m in tf:
                    self.add(tf, m)
        except tarfile.TarError as e:
            raise ImageError(f"{self.noun} is not a valid tar archive: {e}") from None
        except EOFError:
            raise ImageError(f"{self.noun} is truncated") from None

    def add(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        """member(), with what the kernel refuses in an entry (an xattr value it rejects, a name too long, ...)
        worded as the layer's fault; a full disk stays an OSError for the caller."""
        try:
            self.member(tf, m)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise ImageError(f"{self.noun} entry {m.name!r} cannot be made: {e.strerror or e}") from None

    def member(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        rel = self._rel(m.name, "path")
        if rel is None:
            return
        path = self._parent_ok(rel, m.name)
        base = rel.name
        if self.layer and base == OPAQUE:
            os.setxattr(path.parent, "trusted.overlay.opaque", b"y")
            return
        if self.layer and base.startswith(WHITEOUT):
            target = base[len(WHITEOUT) :]
            if target in ("", ".", "..") or "/" in target:
                raise ImageError(f"{self.noun} entry {m.name!r}: whiteout of {target!r} refused")
            wpath = path.parent / target
            self._clear(wpath, keep_dir=False)
            os.mknod(wpath, stat.S_IFCHR | 0o000, os.makedev(0, 0))
            return
        self._charge(512, m.name)
        if m.isdir():
            self._clear(path, keep_dir=True)
            if not path.is_dir():
                path.mkdir(mode=0o700)
        elif m.isreg():
            if m.mode & (stat.S_ISUID | stat.S_ISGID) and m.mode & stat.S_IWOTH:
                raise ImageError(f"{self.noun} entry {m.name!r}: setuid/setgid file that anyone may write refused")
            self._clear(path, keep_dir=False)
            self._charge(m.size, m.name)
            src = tf.extractfile(m)
            assert src is not None
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
        elif m.issym():
            self._clear(path, keep_dir=False)
            os.symlink(m.linkname, path)
        elif m.islnk():
            src_rel = self._rel(m.linkname, "hardlink target")
            if src_rel is None:
                raise ImageError(f"{self.noun} entry {m.name!r}: hardlink to the {self.noun} root refused")
            src_path = self._parent_ok(src_rel, m.linkname)
            try:
                st = src_path.lstat()
            except FileNotFoundError:
                raise ImageError(f"{self.noun} entry {m.name!r}: hardlink target {m.linkname!r} is not in this "
                                 f"{self.noun}") from None
            if stat.S_ISDIR(st.st_mode):
                raise ImageError(f"{self.noun} entry {m.name!r}: hardlink to a directory refused")
            self._clear(path, keep_dir=False)
            os.link(src_path, path, follow_symlinks=False)
            return  # shares the target's inode: mode and owner are the target's
        elif m.isfifo():
            self._clear(path, keep_dir=False)
            os.mkfifo(path, 0o600)
        elif m.ischr() or m.isblk():
            if not self.allow_devices:
                raise ImageError(f"{self.noun} entry {m.name!r}: device node refused")
            self._clear(path, keep_dir=False)
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor))
        else:
            raise ImageError(f"{self.noun} entry {m.name!r}: unsupported type {m.type!r}")
        self._attrs(path, m)

    def _attrs(self, path: Path, m: tarfile.TarInfo) -> None:
        for key, value in m.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr.") :]
            if not name.startswith(("user.", "security.capability")):
                raise ImageError(f"{self.noun} entry {m.name!r}: xattr {name!r} refused")
            os.setxattr(path, name, value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
        if self.owners:
            os.chown(path, m.uid, m.gid, follow_symlinks=False)
        if not m.issym():
            os.chmod(path, m.mode & 0o7777)
        os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)


def unpack_layer(stream: BinaryIO, dest: Path, *, allow_devices: bool = False,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Unpacks an uncompressed tar stream into `dest` (which must be a new, empty directory)."""
    dest.mkdir(mode=0o755)
    _Unpacker(dest, allow_devices, max_bytes).run(stream)


def unpack_into(stream: BinaryIO, dest: Path, *, owners: bool, rename: tuple[str, str] | None = None,
                max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """hyperctl cp: unpacks a container's tar stream into the existing directory `dest` with the layer rules
    (nothing outside it, nothing through a symlink); `.wh.` names are plain files. `owners`: keep the archive's
    uid/gid (root only); `rename` (old, new): the entries' first component `old` becomes `new`."""
    _Unpacker(dest, False, max_bytes, layer=False, owners=owners, rename=rename).run(stream)
