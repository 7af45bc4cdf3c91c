"""Shared fixtures. VM tests run against a real hyperd with its own root, runtime dir and socket."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
AGENT_SRC = REPO / "src" / "hypercontainer" / "guest" / "agent"
BIN = Path(sys.executable).parent
BUILD = REPO / "build"


def _build_busybox_archive() -> Path:
    out = BUILD / "busybox.tar"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "hypercontainer.image.busybox", str(out)], check=True,
                       capture_output=True)
    return out


@pytest.fixture(scope="session")
def busybox_tar() -> Path:
    return _build_busybox_archive()


@pytest.fixture(scope="session")
def agent_host_binary() -> Path:
    out = BUILD / "agent-host"
    subprocess.run(["make", "-s", "-C", str(AGENT_SRC), f"OUT={out}", f"{out}/hc-agent-host"], check=True)
    return out / "hc-agent-host"


class Daemon:
    """A hyperd of its own (root, runtime dir, socket), optionally inside a network namespace the tests made.
    Without one it runs with --network none: the test suite never sets up networking in the host's namespace.
    It keeps no warm pool unless a test asks for one (HYPERCONTAINER_POOL): pool VMs filling in the background would
    compete with the test for this host's CPUs; tests/test_pool_default.py runs hyperd's defaults as they are."""

    def __init__(self, root: Path, netns: Path | None = None, **env: str) -> None:
        self.root = root
        self.netns = netns
        self.env = dict(os.environ,
                        HYPERCONTAINER_ROOT=str(root / "state"),
                        HYPERCONTAINER_RUN=str(root / "run"),
                        HYPERCONTAINER_SOCKET=str(root / "run" / "hyperd.sock"),
                        HYPERCONTAINER_CRI_SOCKET=str(root / "run" / "cri.sock"),  # hyperd --cri-socket
                        HYPERCONTAINER_AUDIT_LOG=str(root / "audit.log"),  # not the host's /var/log
                        HYPERCONTAINER_ASSETS=os.environ.get("HYPERCONTAINER_ASSETS", "/var/lib/hypercontainer/assets"),
                        HYPERCONTAINER_NETWORK="auto" if netns else "none", HYPERCONTAINER_POOL="0")
        self.env.update(env)
        self.proc: subprocess.Popen | None = None
        self.log = root / "hyperd.log"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            prefix = ["nsenter", f"--net={self.netns}"] if self.netns else []
            self.proc = subprocess.Popen([*prefix, str(BIN / "hyperd")], env=self.env, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + 600  # the first start may fetch the kernel and probe the accelerator
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hyperd exited: {self.log.read_text()[-2000:]}")
            if self.hyperctl("version", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("hyperd did not come up")

    def stop(self) -> None:
        """Removes every pod (they would outlive hyperd), then stops hyperd."""
        if self.proc and self.proc.poll() is None:
            ids = self.hyperctl("ps", "-aq").stdout.split()
            if ids:
                self.hyperctl("rm", "-f", *[i.decode() for i in ids])
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def hyperctl(self, *args: str, input: bytes | None = None, check: bool = False,
                 timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "hyperctl"), *args], env=self.env, input=input, capture_output=True,
                              timeout=timeout, check=check)

    def popen(self, *args: str, **kw) -> subprocess.Popen:
        return subprocess.Popen([str(BIN / "hyperctl"), *args], env=self.env, **kw)

    def wait_pool_ready(self, tries: int = 1200, every: float = 0.1) -> None:
        """Until hyperd's warm pool is full (it fills in the background once the template is built)."""
        for _ in range(tries):
            pool = json.loads(self.hyperctl("info", "--json", check=True).stdout)["boot"]["pool"]
            if pool["ready"] == pool["size"]:
                return
            time.sleep(every)
        raise AssertionError("the pool never filled")

    def mountinfo(self) -> str:
        """The mount table of hyperd's own mount namespace (storage/mountns.py), where its pods' mounts live: its
        process's while it runs; while it is down, the namespace its pin holds for the VMs that may run on; with
        neither, the host's (nothing of hyperd's may be left there)."""
        if self.proc and self.proc.poll() is None:
            return Path(f"/proc/{self.proc.pid}/mountinfo").read_text()
        pin = self.rundir / "ns" / "mnt"
        if os.path.ismount(pin):
            return subprocess.run(["nsenter", f"--mount={pin}", "cat", "/proc/self/mountinfo"], capture_output=True,
                                  text=True, check=True).stdout
        return Path("/proc/self/mountinfo").read_text()

    def mounts_under(self, path: Path) -> list[Path]:
        """Mount points at or below `path` in hyperd's mount namespace (see mountinfo)."""
        points = [line.split()[4] for line in self.mountinfo().splitlines()]
        return [Path(p) for p in points if p == str(path) or p.startswith(f"{path}/")]

    def view(self, path: Path) -> Path:
        """`path` as hyperd (and so its VMs' share daemons) sees it: through its root in its mount namespace."""
        assert self.proc and self.proc.poll() is None, "hyperd is not running"
        return Path(f"/proc/{self.proc.pid}/root") / path.relative_to("/")

    @property
    def cri_socket(self) -> Path:
        return self.root / "run" / "cri.sock"

    @property
    def rundir(self) -> Path:
        return self.root / "run"

    @property
    def statedir(self) -> Path:
        return self.root / "state"


@pytest.fixture(scope="session")
def hyperd(busybox_tar: Path):
    if os.geteuid() != 0:
        pytest.skip("VM tests need root (overlay mounts, QEMU)")
    root = Path(tempfile.mkdtemp(prefix="hc-test-"))
    d = Daemon(root)
    d.start()
    d.hyperctl("load", "-i", str(busybox_tar), check=True)
    yield d
    d.stop()
    shutil.rmtree(root, ignore_errors=True)
