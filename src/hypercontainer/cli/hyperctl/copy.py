"""hyperctl cp: files between a running pod's container and here, as tar streams (docker cp's rules).

    cp POD:SRC DEST     DEST an existing directory: SRC lands in it; else SRC is saved as DEST (its parent must
                        exist); SRC ending in /. copies the directory's contents; DEST '-': the tar on stdout
    cp SRC POD:DEST     the same the other way; SRC '-': a tar read from stdin, unpacked in the directory DEST

What comes from the pod is unpacked with the image layers' rules (nothing outside DEST, nothing through a
symlink, no device nodes); into the pod, the guest applies the same ones inside the container's root."""

from __future__ import annotations

import os
import stat
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import click

from ...client import Pod
from ...errors import HCError, InvalidArgument, NotFound
from ..client import Client

CHUNK = 1 << 20


def split_ref(arg: str) -> tuple[str, str] | None:
    """'POD:PATH' -> (POD, PATH); None for a local path (one with a '/' before any ':', or none: docker's rule)."""
    pod, sep, path = arg.partition(":")
    if not sep or "/" in pod or not pod:
        return None
    return pod, path


def _base(path: str) -> str:
    name = PurePosixPath(path.rstrip("/") or "/").name
    return name or "/"


def _contents(path: str) -> bool:
    return path.endswith("/.")


def _remote_stat(pod: Pod, path: str, container: str | None) -> dict | None:
    try:
        return pod.stat_path(path, container=container)
    except NotFound:
        return None


def copy_out(pod: Pod, ref: str, src: str, dest: str, container: str | None, archive: bool) -> None:
    from ...image.unpack import unpack_into

    if dest == "-":
        with pod.get_archive(src, container=container) as r:
            while chunk := r.read(CHUNK):
                sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return
    st = _remote_stat(pod, src, container)
    if st is None:
        raise NotFound(f"{ref}:{src}: no such file or directory")
    local = Path(dest)
    rename = None
    if local.is_dir():
        into = local
    elif dest.endswith("/"):
        raise InvalidArgument(f"{dest}: no such directory")
    elif local.exists() and st["dir"]:
        raise InvalidArgument(f"cannot copy the directory {ref}:{src} onto the file {dest}")
    elif not local.parent.is_dir():
        raise InvalidArgument(f"{local.parent}: no such directory")
    elif _contents(src):
        local.mkdir()
        into = local
    else:
        into, rename = local.parent, (_base(src), local.name)
    owners = archive and os.geteuid() == 0
    with pod.get_archive(src, container=container) as r:
        unpack_into(r, into, owners=owners, rename=rename)


def tar_chunks(src: Path, arcname: str) -> Iterator[bytes]:
    """A PAX tar of `src` (named `arcname`; '.' for a directory's contents) as chunks, written by a thread."""
    rfd, wfd = os.pipe()
    failure: list[BaseException] = []

    def write() -> None:
        try:
            with os.fdopen(wfd, "wb") as w, tarfile.open(fileobj=w, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                tf.add(src, arcname=arcname, recursive=True)
        except BaseException as e:  # reported by the reader
            failure.append(e)

    t = threading.Thread(target=write, daemon=True)
    t.start()
    with os.fdopen(rfd, "rb") as r:
        while chunk := r.read(CHUNK):
            yield chunk
    t.join()
    if failure:
        raise HCError(f"cannot read {src}: {failure[0]}")


def stdin_chunks() -> Iterator[bytes]:
    while chunk := sys.stdin.buffer.read(CHUNK):
        yield chunk


def copy_in(src: str, pod: Pod, ref: str, dest: str, container: str | None, archive: bool, follow: bool) -> None:
    if not dest.startswith("/"):
        raise InvalidArgument(f"{ref}:{dest}: the path in the pod must be absolute")
    st = _remote_stat(pod, dest, container)
    if src == "-":
        if st is None or not st["dir"]:
            raise InvalidArgument(f"{ref}:{dest}: no such directory (a tar from stdin is unpacked in a directory)")
        body, into = stdin_chunks(), dest
    else:
        local = Path(src.removesuffix("/.") if _contents(src) else src)
        try:
            lst = local.stat() if follow else local.lstat()
        except OSError as e:
            raise InvalidArgument(f"{src}: {e.strerror.lower() if e.strerror else e}") from None
        is_dir = stat.S_ISDIR(lst.st_mode)
        if follow and local.is_symlink():
            local = local.resolve()
        if st is not None and st["dir"]:
            into, arcname = dest, "." if _contents(src) and is_dir else local.name
        elif st is not None and is_dir:
            raise InvalidArgument(f"cannot copy the directory {src} onto the file {ref}:{dest}")
        elif dest.endswith("/"):
            raise InvalidArgument(f"{ref}:{dest}: no such directory")
        else:  # saved as dest: its parent must be a directory
            parent = str(PurePosixPath(dest).parent)
            pst = _remote_stat(pod, parent, container)
            if pst is None or not pst["dir"]:
                raise InvalidArgument(f"{ref}:{parent}: no such directory")
            into, arcname = parent, PurePosixPath(dest).name
        body = tar_chunks(local, arcname)
    pod.put_archive(into, body, owners=archive, container=container)


@click.command("cp", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-a", "--archive", is_flag=True, help="Keep uid/gid (into a pod; out of one, when run as root).")
@click.option("-L", "--follow-link", is_flag=True, help="Copy what a local SRC symlink points to.")
@click.option("-c", "--container", help="The pod's container (default: its first).")
@click.argument("src")
@click.argument("dest")
def cp(archive: bool, follow_link: bool, container: str | None, src: str, dest: str) -> None:
    """Copy files between a pod's container and here: cp POD:SRC DEST, or cp SRC POD:DEST ('-': a tar stream)."""
    a, b = split_ref(src), split_ref(dest)
    if (a is None) == (b is None):
        raise click.UsageError("give exactly one of SRC and DEST as POD:PATH")
    pods = Client(timeout=None).pods
    if a is not None:
        copy_out(pods.handle(a[0]), a[0], a[1], dest, container, archive)
    else:
        assert b is not None
        copy_in(src, pods.handle(b[0]), b[0], b[1], container, archive, follow_link)


COMMANDS = [cp]
