"""Safe layer unpacking: a hostile-layer corpus, each refused with a clear message and the host untouched."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from hypercontainer.errors import ImageError
from hypercontainer.image.unpack import unpack_layer

from .layers import entry, header_only, layer

D, F, S, L = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


def unpack(data: bytes, dest: Path, **kw: object) -> None:
    unpack_layer(io.BytesIO(data), dest, **kw)  # type: ignore[arg-type]


def test_ordinary_layer(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    unpack(layer(entry("etc", D, mode=0o755), entry("etc/hosts", F, b"127.0.0.1 x\n", mode=0o640, uid=7, gid=8),
                 entry("bin/sh", S, link="/bin/busybox"), entry("bin/busybox", F, b"ELF", mode=0o4755),
                 entry("bin/ash", L, link="bin/busybox")), dest)
    st = (dest / "etc/hosts").stat()
    assert (dest / "etc/hosts").read_bytes() == b"127.0.0.1 x\n"
    assert stat.S_IMODE(st.st_mode) == 0o640 and (st.st_uid, st.st_gid) == (7, 8)
    assert os.readlink(dest / "bin/sh") == "/bin/busybox"
    assert (dest / "bin/ash").stat().st_ino == (dest / "bin/busybox").stat().st_ino
    assert stat.S_IMODE((dest / "bin/busybox").stat().st_mode) == 0o4755


def test_whiteouts_become_overlay_markers(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    unpack(layer(entry("etc/.wh.passwd"), entry("var", D, mode=0o755), entry("var/.wh..wh..opq")), dest)
    st = (dest / "etc/passwd").lstat()
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(dest / "var", "trusted.overlay.opaque") == b"y"


HOSTILE = {
    "dotdot path": (layer(entry("../escape", F, b"x")), "with '..'"),
    "nested dotdot": (layer(entry("a/../../escape", F, b"x")), "with '..'"),
    "absolute path": (layer(entry("/escape", F, b"x")), "absolute"),
    "write through symlink": (layer(entry("lnk", S, link="/tmp"), entry("lnk/escape", F, b"x")), "through the symlink"),
    "write through relative symlink": (layer(entry("lnk", S, link="../../.."), entry("lnk/escape", F, b"x")),
                                       "through the symlink"),
    "hardlink to host file": (layer(entry("pw", L, link="/etc/passwd")), "absolute"),
    "hardlink with dotdot": (layer(entry("pw", L, link="../../../etc/passwd")), "with '..'"),
    "hardlink through symlink": (layer(entry("etc", S, link="/etc"), entry("pw", L, link="etc/passwd")),
                                 "through the symlink"),
    "hardlink to missing": (layer(entry("pw", L, link="nothere")), "not in this layer"),
    "whiteout of dotdot": (layer(entry("a/.wh...", F)), "whiteout"),
    "device node": (layer(entry("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0)), "device node"),
    "char device": (layer(entry("dev/mem", tarfile.CHRTYPE, devmajor=1, devminor=1)), "device node"),
    "trusted xattr": (layer(entry("f", F, b"x", pax_headers={"SCHILY.xattr.trusted.overlay.opaque": "y"})), "xattr"),
    "truncated": (layer(entry("big", F, b"y" * 100000))[:20000], "truncated|not a valid tar"),
    "world-writable setuid": (layer(entry("bin/evil", F, b"ELF", mode=0o4777)), "setuid"),
    "huge sparse file": (header_only("sparse", 1 << 40) + b"\0" * 4096, "bomb"),
    "garbage": (b"\x00garbage" * 100, "not a valid tar|truncated"),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_layers_refused(case: str, tmp_path: Path) -> None:
    data, why = HOSTILE[case]
    outside = tmp_path / "escape"
    dest = tmp_path / "a" / "b" / "root"
    dest.parent.mkdir(parents=True)
    before = Path("/etc/passwd").read_bytes()
    with pytest.raises(ImageError, match=why):
        unpack(data, dest)
    assert not outside.exists() and not (tmp_path / "a" / "escape").exists()
    assert not Path("/tmp/escape").exists()
    assert Path("/etc/passwd").read_bytes() == before


def test_bomb_guard(tmp_path: Path) -> None:
    data = layer(*(entry(f"f{i}", F, b"z" * 4096) for i in range(64)))
    with pytest.raises(ImageError, match="bomb"):
        unpack(data, tmp_path / "root", max_bytes=100_000)


def test_devices_when_allowed(tmp_path: Path) -> None:
    unpack(layer(entry("null", tarfile.CHRTYPE, devmajor=1, devminor=3)), tmp_path / "root", allow_devices=True)
    assert (tmp_path / "root/null").lstat().st_rdev == os.makedev(1, 3)
