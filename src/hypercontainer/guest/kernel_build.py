"""Our own guest kernel: the distribution's kernel source package (found through apt, never a hard-coded
release), configured as `make tinyconfig` + the fragment in guest/kernel_config/guest.config, built once into the
assets cache and keyed by package version + fragment. Everything the guest needs is built in: no modules.

    <assets>/kernel-own-<key>/vmlinux   booted directly (PVH): the fastest start here
    <assets>/kernel-own-<key>/release   the kernel release string
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .kernel import Kernel, KernelError, run

FRAGMENT = Path(__file__).parent / "kernel_config" / "guest.config"
RECIPE = "1"  # bump when the build steps change what comes out
# Options the guest cannot do without; the build fails loudly if the config lost one.
REQUIRED = ("VIRTIO_MMIO", "VIRTIO_CONSOLE", "VIRTIO_BLK", "VIRTIO_NET", "VIRTIO_FS", "9P_FS", "NET_9P_VIRTIO",
            "OVERLAY_FS", "EXT4_FS", "HW_RANDOM_VIRTIO", "PVH", "BLK_DEV_INITRD", "DEVTMPFS", "UNIX98_PTYS")


def source_package() -> tuple[str, str]:
    """(package, version) of the newest `linux-source-X.Y` apt offers."""
    r = subprocess.run(["apt-cache", "search", "--names-only", r"^linux-source-[0-9][0-9.]*$"],
                       capture_output=True, text=True)
    names = [line.split()[0] for line in r.stdout.splitlines() if line.strip()]
    if not names:
        raise KernelError("apt offers no linux-source-X.Y package; run 'apt-get update' (or use the distribution's "
                          "kernel: HYPERCONTAINER_KERNEL=distro)")

    def key(name: str) -> tuple[int, ...]:
        return tuple(int(x) for x in name.removeprefix("linux-source-").split(".") if x.isdigit())

    # The one the plain `linux-source` meta package points at, where there is one: the distribution's own.
    meta = subprocess.run(["apt-cache", "depends", "--important", "linux-source"], capture_output=True, text=True)
    wanted = re.findall(r"Depends:\s*(linux-source-[0-9][0-9.]*)\s*$", meta.stdout, re.M)
    name = wanted[0] if wanted and wanted[0] in names else max(names, key=key)
    policy = subprocess.run(["apt-cache", "policy", name], capture_output=True, text=True).stdout
    m = re.search(r"Candidate:\s*(\S+)", policy)
    return name, m.group(1) if m else "unknown"


def cache_key(package: str, version: str) -> str:
    h = hashlib.sha256(f"{package}={version}:{RECIPE}:".encode() + FRAGMENT.read_bytes())
    return h.hexdigest()[:12]


def built(cache: Path) -> Kernel | None:
    """The newest kernel we built, if any (no apt call: hyperd's start stays fast)."""
    homes = sorted((p for p in cache.glob("kernel-own-*") if (p / "release").exists()),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    if not homes:
        return None
    return Kernel((homes[0] / "release").read_text().strip(), homes[0] / "vmlinux", ())


def _config_has(config: str, option: str) -> bool:
    return re.search(rf"^CONFIG_{re.escape(option)}=y$", config, re.M) is not None


LOCK = ".kernel-build.lock"  # held while a build runs: hyperd's background one and `make assets` wait for each other


@contextlib.contextmanager
def _locked(cache: Path, progress: Callable[[str], None]) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("guest kernel: another build of it is running (hyperd builds it in the background on a first "
                     "run: hyperctl info shows how far it is); waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        for stale in cache.glob(".kbuild-*"):  # what a build that was killed left (none runs: the lock is ours)
            shutil.rmtree(stale, ignore_errors=True)
        yield


def build(cache: Path, progress: Callable[[str], None] = print, jobs: int | None = None) -> Kernel:
    """Builds the kernel unless this package version + fragment already was (waiting for a build of it that
    another process runs)."""
    package, version = source_package()
    home = cache / f"kernel-own-{cache_key(package, version)}"
    if (home / "release").exists():
        return Kernel((home / "release").read_text().strip(), home / "vmlinux", ())
    with _locked(cache, progress):
        if (home / "release").exists():  # built while this one waited
            return Kernel((home / "release").read_text().strip(), home / "vmlinux", ())
        return _build(cache, home, package, version, progress, jobs)


def _build(cache: Path, home: Path, package: str, version: str, progress: Callable[[str], None],
           jobs: int | None) -> Kernel:
    for tool in ("make", "gcc", "flex", "bison", "bc", "lz4"):
        if not shutil.which(tool):
            raise KernelError(f"building the guest kernel needs {tool} (make assets installs it)")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".kbuild-", dir=cache))
    t0 = time.monotonic()
    try:
        progress(f"guest kernel: fetching {package} {version}")
        run(["apt-get", "download", package], cwd=tmp)
        deb = next(tmp.glob("*.deb"))
        run(["dpkg-deb", "-x", str(deb), str(tmp / "x")])
        deb.unlink()
        tarballs = sorted((tmp / "x" / "usr" / "src").glob("linux-source-*.tar*"))
        if not tarballs:
            raise KernelError(f"{package} holds no /usr/src/linux-source-*.tar*")
        progress("guest kernel: unpacking the source")
        run(["tar", "-xf", str(tarballs[0]), "-C", str(tmp)])
        shutil.rmtree(tmp / "x")
        src = next(p for p in tmp.iterdir() if p.is_dir() and p.name.startswith("linux-source-"))
        progress("guest kernel: configuring (tinyconfig + guest.config)")
        run(["make", "-s", "tinyconfig"], cwd=src)
        run([str(src / "scripts" / "kconfig" / "merge_config.sh"), "-m", ".config", str(FRAGMENT)], cwd=src)
        run(["make", "-s", "olddefconfig"], cwd=src)
        config = (src / ".config").read_text()
        missing = [o for o in REQUIRED if not _config_has(config, o)]
        if missing:
            raise KernelError(f"the kernel config lost {', '.join('CONFIG_' + o for o in missing)}")
        _make_with_progress(src, jobs or os.cpu_count() or 2, progress)
        release = run(["make", "-s", "kernelrelease"], cwd=src).strip()
        out = tmp / "out"
        out.mkdir()
        run(["strip", "--strip-debug", "-o", str(out / "vmlinux"), str(src / "vmlinux")])
        shutil.copy2(src / ".config", out / "config")
        (out / "release").write_text(release + "\n")
        if home.exists():
            shutil.rmtree(home)
        out.rename(home)
        progress(f"guest kernel: {release} built in {time.monotonic() - t0:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Kernel(release, home / "vmlinux", ())


def _make_with_progress(src: Path, jobs: int, progress: Callable[[str], None]) -> None:
    """`make vmlinux`, reporting how many objects are done every 15 s (a clean build takes minutes)."""
    proc = subprocess.Popen(["make", f"-j{jobs}", "vmlinux"], cwd=src, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout
    done, last = 0, time.monotonic()
    tail: list[str] = []
    for line in proc.stdout:
        tail = [*tail, line][-30:]
        if line.lstrip().startswith("CC "):
            done += 1
        if time.monotonic() - last > 15:
            progress(f"guest kernel: compiling ({done} files so far)")
            last = time.monotonic()
    if proc.wait():
        raise KernelError("building the guest kernel failed:\n" + "".join(tail))


def main() -> None:
    from ..config import paths

    k = build(paths().assets, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(k.image)


if __name__ == "__main__":
    main()
