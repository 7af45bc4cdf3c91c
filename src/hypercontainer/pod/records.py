"""What the pod manager persists, and the interface of whatever stores it (hyperd's sqlite)."""

from __future__ import annotations

from typing import Protocol


class PodRecords(Protocol):
    def save(self, pod_id: str, name: str, state: str, info: dict) -> None: ...
    def delete(self, pod_id: str) -> None: ...
    def all(self) -> list[dict]: ...
