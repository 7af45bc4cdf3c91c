"""Resolving `-u name|uid[:group|gid]` against the image's /etc/passwd and /etc/group, as docker does."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidArgument
from ..storage.safefs import Root, read_file


@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def _table(root: Root, name: str) -> list[list[str]]:
    data = read_file(root, name) or b""
    return [line.split(":") for line in data.decode(errors="replace").splitlines() if line and line[0] != "#"]


def user_names(root: Root) -> dict[int, str]:
    """uid -> name from the image's /etc/passwd (the first name of each uid)."""
    names: dict[int, str] = {}
    for r in _table(root, "etc/passwd"):
        if len(r) >= 3 and r[2].isdigit():
            names.setdefault(int(r[2]), r[0])
    return names


def resolve(root: Root, spec: str | None) -> User:
    spec = spec or "0"
    user, _, group = spec.partition(":")
    passwd = [r for r in _table(root, "etc/passwd") if len(r) >= 7]
    groups = [r for r in _table(root, "etc/group") if len(r) >= 3]
    entry = next((r for r in passwd if (r[0] == user if not user.isdigit() else r[2] == user)), None)
    if user.isdigit():
        uid = int(user)
    elif entry:
        uid = int(entry[2])
    else:
        raise InvalidArgument(f"unable to find user {user}: no matching entries in the image's /etc/passwd")
    gid = int(entry[3]) if entry and entry[3].isdigit() else 0
    home = entry[5] if entry else "/"
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            g = next((r for r in groups if r[0] == group), None)
            if g is None:
                raise InvalidArgument(f"unable to find group {group}: no matching entries in the image's /etc/group")
            gid = int(g[2])
    name = entry[0] if entry else None
    extra = tuple(sorted({int(r[2]) for r in groups if name and name in r[3].split(",") and r[2].isdigit()}))
    if uid >= 2**32 or gid >= 2**32:
        raise InvalidArgument(f"user {spec}: id out of range")
    return User(uid, gid, extra, home)
