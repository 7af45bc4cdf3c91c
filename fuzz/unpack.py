"""image/unpack.py: a layer (plain tar, or gzip/zstd, as the store opens it) unpacked into a temporary directory.

Allowed: ImageError (the layer refused). Checked besides: nothing outside the destination changed (a sibling
directory and a symlink to it stay as they were, nothing new appears beside the destination); the same for
`unpack_into` (hyperctl cp's rules) into an existing directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from io import BytesIO
from pathlib import Path

import atheris
import zstandard

with atheris.instrument_imports(include=["hypercontainer.image.unpack", "tarfile", "gzip"]):
    import gzip  # noqa: F401 - instrumented for open_layer's gzip path
    import tarfile  # noqa: F401

    from hypercontainer.errors import ImageError
    from hypercontainer.image.store import open_layer
    from hypercontainer.image.unpack import unpack_into, unpack_layer

BASE = Path(tempfile.mkdtemp(prefix="hc-fuzz-unpack-"))
MAX_BYTES = 1 << 20


def _snapshot(root: Path, skip: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        if Path(dirpath) == skip:
            dirs.clear()
            continue
        for n in dirs + files:
            p = Path(dirpath) / n
            if p == skip:
                continue
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_uid, st.st_mtime_ns,
                                             os.readlink(p) if p.is_symlink() else None)
    return out


def test_one(data: bytes) -> None:
    work = Path(tempfile.mkdtemp(dir=BASE))
    try:
        outside = work / "outside"
        outside.mkdir()
        (outside / "file").write_bytes(b"keep")
        (work / "link").symlink_to(outside)
        into = work / "into"
        into.mkdir()
        (into / "escape").symlink_to(outside)
        dest = work / "dest"
        before = _snapshot(work, dest)
        compressed = data[:2] == b"\x1f\x8b" or data[:4] == b"\x28\xb5\x2f\xfd"
        try:
            unpack_layer(open_layer(BytesIO(data)), dest, max_bytes=MAX_BYTES)
        except ImageError:
            pass
        except (EOFError, OSError, zstandard.ZstdError):
            # a damaged gzip or zstd stream: the store's unpack_stream words these (ImageError); a plain tar
            # may raise nothing but ImageError
            if not compressed:
                raise
        with contextlib.suppress(ImageError):
            unpack_into(BytesIO(data), into, owners=True, rename=("a", "b"), max_bytes=MAX_BYTES)
        after = _snapshot(work, dest)
        # `into` itself is unpack_into's to change: only what was beside it counts
        after = {k: v for k, v in after.items() if not k.startswith("into/")} | \
            {k: v for k, v in before.items() if k.startswith("into/")}
        before.pop("into")
        after.pop("into", None)
        assert before == after, (sorted(set(before.items()) ^ set(after.items())))
        assert (into / "escape").is_symlink() and os.readlink(into / "escape") == str(outside)
    finally:
        _rmtree(work)


def _rmtree(path: Path) -> None:
    for dirpath, dirs, _files in os.walk(path):  # modes 000 do not stop root, but chattr-free dirs may be 0
        for d in dirs:
            p = Path(dirpath) / d
            if not p.is_symlink():
                os.chmod(p, 0o700)
    shutil.rmtree(path)
