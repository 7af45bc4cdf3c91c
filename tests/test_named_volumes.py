"""storage/named_volumes.py: a tenant's volumes are sparse ext4 images of their own, named per owner, counted, and
not removable while a pod uses them. Mounting one in a pod (a virtio disk) is in test_tenants.py, on real VMs."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from hypercontainer.errors import Conflict, InvalidArgument, NotFound
from hypercontainer.storage.named_volumes import ADMIN, NamedVolumes

MIB = 1 << 20


def ext4(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(1024 + 0x38)
        return struct.unpack("<H", f.read(2))[0] == 0xEF53  # the superblock's magic


def test_volumes_are_sparse_ext4_images_named_per_owner(tmp_path: Path) -> None:
    v = NamedVolumes(tmp_path / "volumes", tmp_path / "db")
    a = asyncio.run(v.create("alice", "data", 64 * MIB))
    b = asyncio.run(v.create("bob", "data", 32 * MIB))  # the same name, another owner
    admin = asyncio.run(v.create(ADMIN, "data", 32 * MIB))
    assert len({a.path, b.path, admin.path}) == 3 and all(ext4(x.path) for x in (a, b, admin))
    st = a.path.stat()
    assert st.st_size == 64 * MIB and st.st_blocks * 512 < 16 * MIB  # sparse: the filesystem's metadata only
    assert v.used("alice") == 64 * MIB and v.used("carol") == 0
    with pytest.raises(Conflict, match="volume data exists"):
        asyncio.run(v.create("alice", "data", 32 * MIB))
    with pytest.raises(NotFound, match="no such volume: data"):
        v.get("carol", "data")
    assert [x.name for x in v.all("alice")] == ["data"] and len(v.all()) == 3
    with pytest.raises(Conflict, match="in use by a pod"):
        v.remove("alice", "data", in_use={a.path})
    assert a.path.exists()
    v.remove("alice", "data", in_use={b.path})
    assert not a.path.exists() and v.all("alice") == [] and b.path.exists()


@pytest.mark.parametrize(("name", "size", "why"), [
    ("../x", 64 * MIB, "invalid volume name"), (".hidden", 64 * MIB, "invalid volume name"),
    ("ok", 1 * MIB, "from 32 MiB"), ("ok", 1 << 50, "from 32 MiB")])
def test_bad_requests_leave_nothing(tmp_path: Path, name: str, size: int, why: str) -> None:
    v = NamedVolumes(tmp_path / "volumes", tmp_path / "db")
    with pytest.raises(InvalidArgument, match=why):
        asyncio.run(v.create("alice", name, size))
    assert v.all() == [] and not (tmp_path / "volumes").exists()


def test_a_failed_mkfs_leaves_no_record_and_no_image(tmp_path: Path) -> None:
    """The volumes' directory is a file: the image cannot be made; the name stays free."""
    (tmp_path / "volumes").write_text("in the way")
    v = NamedVolumes(tmp_path / "volumes", tmp_path / "db")
    with pytest.raises(OSError):
        asyncio.run(v.create("alice", "data", 64 * MIB))
    assert v.all() == []
