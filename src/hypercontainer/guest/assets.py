"""Builds the guest assets into a cache directory, rebuilding only what changed (content hashes).

    <assets>/kernel-own-<key>/    our own kernel, built by `make assets` (kernel_build.py); preferred once built
    <assets>/kernel-<pkg>/        the unpacked distro kernel and its modules (the fallback)
    <assets>/agent-<hash>/        the static agent built from guest/agent/*
    <assets>/initrd-<hash>.cpio   /init (the agent) + modules + load list
    <assets>/current.json         what the daemon boots

Agents, initramfs images and kernel builds that are no longer current are removed a day after they were made
(a hyperd started before they were replaced may still boot from them until it restarts).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import HCError
from . import initramfs, kernel_build
from .kernel import Kernel, KernelError, distro_kernel

AGENT_SRC = Path(__file__).parent / "agent"
STALE_AFTER = 24 * 3600.0


@dataclass(frozen=True)
class Assets:
    kernel: Path
    initrd: Path
    kernel_release: str
    agent_hash: str
    digest: str  # of kernel + initrd: keys caches such as the accelerator probe

    def to_json(self) -> str:
        return json.dumps({k: str(v) for k, v in asdict(self).items()}, indent=2)


def _tree_hash(root: Path, patterns: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for pat in patterns:
        for p in sorted(root.glob(pat)):
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def build_agent(cache: Path) -> tuple[Path, str]:
    digest = _tree_hash(AGENT_SRC, ("*.c", "*.h", "Makefile"))
    out = cache / f"agent-{digest}"
    binary = out / "hc-agent"
    if not binary.exists():
        if not shutil.which("musl-gcc"):
            raise HCError("musl-gcc is missing: install Debian's musl-tools (make demo does)")
        tmp = cache / f".agent-{digest}.{os.getpid()}"
        r = subprocess.run(["make", "-s", "-C", str(AGENT_SRC), f"OUT={tmp}", f"{tmp}/hc-agent"],
                           capture_output=True, text=True)
        if r.returncode:
            shutil.rmtree(tmp, ignore_errors=True)
            raise HCError(f"building the guest agent failed:\n{r.stdout}{r.stderr}")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return binary, digest


def build_initrd(cache: Path, agent: Path, kernel: Kernel) -> Path:
    entries = [initramfs.directory(d) for d in ("dev", "proc", "sys", "tmp", "run", "modules")]
    entries.append(initramfs.chardev("dev/console", 5, 1))
    entries.append(initramfs.file("init", agent.read_bytes(), 0o755))
    for ko in kernel.modules:
        entries.append(initramfs.file(f"modules/{ko.name}", ko.read_bytes()))
    entries.append(initramfs.file("modules/load.list", "".join(k.name + "\n" for k in kernel.modules).encode()))
    data = initramfs.build(entries)
    path = cache / f"initrd-{hashlib.sha256(data).hexdigest()[:16]}.cpio"
    if not path.exists():
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        tmp.rename(path)
    return path


KERNELS = ("auto", "own", "distro")


def choose_kernel(cache: Path, pref: str = "auto") -> Kernel:
    """`pref` (hyperd --kernel, HYPERCONTAINER_KERNEL): `own` (ours, built by make assets), `distro`, or `auto`
    (ours if built)."""
    if pref not in KERNELS:
        raise HCError(f"guest kernel {pref!r}: use auto, own or distro")
    if pref != "distro":
        own = kernel_build.built(cache)
        if own:
            return own
        if pref == "own":
            raise KernelError("no guest kernel of our own is built yet: run 'make assets'")
    return distro_kernel(cache)


def digest(kernel: Kernel, initrd: Path) -> str:
    """What the guest is made of (the initramfs name is its content hash, agent included): keys the accelerator
    probe and the VM templates."""
    return hashlib.sha256(f"{kernel.digest()}:{initrd.name}".encode()).hexdigest()[:16]


def ensure(cache: Path, kernel_pref: str = "auto") -> Assets:
    """Builds what is missing (agent, initramfs) for the kernel `kernel_pref` chooses; records it as current."""
    cache.mkdir(parents=True, exist_ok=True)
    kernel = choose_kernel(cache, kernel_pref)
    agent, agent_hash = build_agent(cache)
    initrd = build_initrd(cache, agent, kernel)
    assets = Assets(kernel.image, initrd, kernel.release, agent_hash, digest(kernel, initrd))
    current = cache / "current.json"
    tmp = current.with_suffix(".tmp")
    tmp.write_text(assets.to_json())
    tmp.rename(current)
    prune(cache, assets)
    return assets


def prune(cache: Path, keep: Assets, now: float | None = None) -> list[Path]:
    """Removes agents, initramfs images and (when ours is in use) kernel builds other than `keep`'s that are
    older than STALE_AFTER. The distribution's kernel stays: it is the fallback."""
    now = time.time() if now is None else now
    kernel_home = keep.kernel.parent
    own_in_use = kernel_home.parent == cache and kernel_home.name.startswith("kernel-own-")
    candidates = [*cache.glob("agent-*"), *cache.glob("initrd-*.cpio"),
                  *(cache.glob("kernel-own-*") if own_in_use else ())]
    gone = []
    for path in candidates:
        if path in (keep.initrd, kernel_home, cache / f"agent-{keep.agent_hash}"):
            continue
        try:
            if path.lstat().st_mtime > now - STALE_AFTER:
                continue
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        except OSError:
            continue
        gone.append(path)
    return gone


def current(cache: Path, kernel_pref: str = "auto") -> Assets:
    """What the last ensure() built (current.json), without rebuilding or hashing anything: for runv's shims,
    which start once per container. Falls back to ensure(cache, kernel_pref) when there is nothing yet."""
    try:
        d = json.loads((cache / "current.json").read_text())
        a = Assets(Path(d["kernel"]), Path(d["initrd"]), d["kernel_release"], d["agent_hash"], d["digest"])
        if a.kernel.exists() and a.initrd.exists():
            return a
    except (OSError, ValueError, KeyError):
        pass
    return ensure(cache, kernel_pref)


def main() -> None:
    """make assets: builds our kernel (unless HYPERCONTAINER_KERNEL=distro; a failed build falls back to the
    distribution's kernel with a warning), the agent and the initramfs. With --quick (make demo) our kernel is not
    built here: the distribution's is used until hyperd has built ours in the background (daemon/kernel_switch.py)."""
    from ..config import environment

    env = environment()
    cache, pref = env.paths.assets, env.kernel
    if pref not in KERNELS:
        raise HCError(f"HYPERCONTAINER_KERNEL={pref!r}: use auto, own or distro")
    if pref != "distro" and "--quick" not in sys.argv[1:]:
        try:
            kernel_build.build(cache, progress=lambda m: print(m, file=sys.stderr, flush=True))
        except KernelError as e:
            if pref == "own":
                raise
            print(f"warning: {e.message}\nwarning: using the distribution's kernel instead", file=sys.stderr)
    a = ensure(cache, pref)
    print(a.to_json())
    sys.exit(0)


if __name__ == "__main__":
    main()
