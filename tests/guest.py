"""The parts of a VM test that drives the pod core directly (no hyperd): the guest assets (rebuilt if the agent's
sources changed, as hyperd does at start), the accelerator, and the busybox image unpacked as one layer."""

from __future__ import annotations

import asyncio
import os
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from hypercontainer.guest import assets as guest_assets
from hypercontainer.image.store import Image
from hypercontainer.image.unpack import unpack_layer
from hypercontainer.vm.accel import detect


def guest_parts(busybox_tar: Path, tmp_path_factory: pytest.TempPathFactory, image_id: str) -> SimpleNamespace:
    """`assets`, `accel` (its name) and `image` (busybox, under `image_id`)."""
    cache = Path(os.environ.get("HYPERCONTAINER_ASSETS", "/var/lib/hypercontainer/assets"))
    a = guest_assets.ensure(cache)
    accel = asyncio.run(detect(a.kernel, a.initrd, a.digest, cache / "accel.json",
                               os.environ.get("HYPERCONTAINER_ACCEL") or None))
    layer = tmp_path_factory.mktemp("busybox") / "layer"
    with tarfile.open(busybox_tar) as outer:
        inner = outer.extractfile("layer/layer.tar")
        assert inner
        unpack_layer(inner, layer)  # type: ignore[arg-type]
    image = Image(image_id, ("busybox:latest",), (), {"config": {"Cmd": ["sh"]}}, ("d",), ("b",), (layer,), 0, "")
    return SimpleNamespace(assets=a, accel=accel.name, image=image)
