"""crictl v1.37.0 for the CRI tests: built once from the Go module proxy into build/cri-tools/ (or the one
`make critest` built), skipped with the reason where no Go can build it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .conftest import BUILD

CRI_TOOLS, CRI_TOOLS_VERSION = "sigs.k8s.io/cri-tools", "v1.37.0"


def _go() -> tuple[str | None, str]:
    """The go binary and why there is none that can build cri-tools (which names its minimum in go.mod)."""
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)
    if not go:
        return None, "no Go toolchain (crictl v1.37.0 is built from the Go module proxy)"
    have = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True).stdout.strip()
    nums = tuple(int(x) for x in re.findall(r"\d+", have)[:2])
    if nums < (1, 24):
        return None, f"Go {have} is older than 1.24"
    return go, ""


def build_crictl() -> Path:
    """crictl v1.37.0, built once into build/cri-tools/ (or the one `make critest` built)."""
    out = BUILD / "cri-tools" / "crictl"
    stamp = out.with_name(".version")
    if out.exists() and stamp.exists() and stamp.read_text() == CRI_TOOLS_VERSION:
        return out
    theirs = BUILD / "critest" / "bin" / "crictl"
    their_stamp = theirs.with_name(".cri-tools-version")
    if theirs.exists() and their_stamp.exists() and their_stamp.read_text().strip() == CRI_TOOLS_VERSION:
        return theirs
    go, why = _go()
    if not go:
        pytest.skip(why)
    env = dict(os.environ, GOFLAGS="-buildvcs=false", CGO_ENABLED="0")
    info = json.loads(subprocess.run([go, "mod", "download", "-json", f"{CRI_TOOLS}@{CRI_TOOLS_VERSION}"], env=env,
                                     cwd=tempfile.gettempdir(), check=True, capture_output=True, text=True).stdout)
    src = BUILD / "cri-tools" / "src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(info["Dir"], src)
    subprocess.run(["chmod", "-R", "u+w", str(src)], check=True)
    r = subprocess.run([go, "build", "-o", str(out), "./cmd/crictl"], cwd=src, env=env, capture_output=True,
                       text=True)
    if r.returncode != 0:
        if "requires go >=" in r.stderr or "go.mod requires go" in r.stderr:
            pytest.skip(f"cri-tools {CRI_TOOLS_VERSION} needs a newer Go: {r.stderr.strip()[-300:]}")
        raise RuntimeError(f"building crictl failed:\n{r.stderr[-3000:]}")
    shutil.rmtree(src, ignore_errors=True)
    stamp.write_text(CRI_TOOLS_VERSION)
    return out
