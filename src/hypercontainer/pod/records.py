"""What the pod manager persists, and the interface of whatever stores it (hyperd's sqlite)."""

from __future__ import annotations

from typing import Any, Protocol, TypedDict

# A pod's info (`Pod.info()`, `hyperctl inspect`): a JSON document, saved as such and read back from disk.
PodInfo = dict[str, Any]


class PodRecord(TypedDict):
    id: str
    name: str
    state: str
    info: PodInfo


class PodRecords(Protocol):
    def save(self, pod_id: str, name: str, state: str, info: PodInfo) -> None: ...
    def delete(self, pod_id: str) -> None: ...
    def all(self) -> list[PodRecord]: ...
