"""image/archive.py: `hyperctl load` of a docker-archive or OCI layout tarball (plain or compressed) into a fresh
image store. Allowed: ImageError (any HCError)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["hypercontainer.image", "hypercontainer.errors"]):
    from hypercontainer.errors import HCError
    from hypercontainer.image.archive import load
    from hypercontainer.image.store import ImageStore

BASE = Path(tempfile.mkdtemp(prefix="hc-fuzz-archive-"))


def test_one(data: bytes) -> None:
    root = Path(tempfile.mkdtemp(dir=BASE))
    try:
        (root / "in.tar").write_bytes(data)
        try:
            images = load(root / "in.tar", ImageStore(root / "store"))
        except HCError:
            return
        assert images
    finally:
        shutil.rmtree(root)
