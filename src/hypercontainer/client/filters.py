"""`pods.list(filters=...)`: docker ps's filters, also hyperctl ps's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import InvalidArgument

KEYS = ("name", "label", "status", "id", "ancestor")
STATUSES = ("created", "running", "paused", "exited")
# docker's state of each of ours (a starting or stopping pod is still running; one that failed exited)
DOCKER_STATE = {"created": "created", "starting": "running", "running": "running", "paused": "paused",
                "stopping": "running", "exited": "exited", "failed": "exited"}
RUNNING = ("running", "starting", "paused")  # what `ps` without -a (`list()` without all=True) shows


def normalize(filters: Mapping[str, str | Sequence[str]] | None) -> dict[str, list[str]]:
    """{KEY: VALUE or [VALUES]} checked: KEY one of KEYS, a status one of STATUSES."""
    out: dict[str, list[str]] = {}
    for key, value in (filters or {}).items():
        values = [value] if isinstance(value, str) else list(value)
        if key not in KEYS:
            raise InvalidArgument(f"invalid filter {key!r}: one of {', '.join(KEYS)}")
        for v in values:
            if key == "status" and v not in STATUSES:
                raise InvalidArgument(f"invalid filter 'status={v}': the status is one of {', '.join(STATUSES)}")
        out[key] = values
    return out


def labels_of(p: dict) -> dict:
    return p.get("labels") or (p.get("spec") or {}).get("labels") or {}


def matches(p: dict, filters: dict[str, list[str]]) -> bool:
    """Whether pod `p` (its inspect dict) passes: as docker, label filters all have to match, the values of any
    other key are alternatives, and different keys all apply."""
    def one(key: str, value: str) -> bool:
        if key == "name":
            return value in p["name"]  # docker: a substring of the name
        if key == "id":
            return str(p["id"]).startswith(value)
        if key == "status":
            return DOCKER_STATE.get(p["state"], p["state"]) == value
        if key == "ancestor":
            image = p.get("image") or ""
            images = {image, image.split("@")[0], (p.get("containers") or [{}])[0].get("image", "")}
            if ":" not in value.rsplit("/", 1)[-1]:
                images.add(image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image)
            return value in images
        k, eq, v = value.partition("=")
        labels = labels_of(p)
        return k in labels and (not eq or labels[k] == v)

    return all((all if key == "label" else any)(one(key, v) for v in values) for key, values in filters.items())
