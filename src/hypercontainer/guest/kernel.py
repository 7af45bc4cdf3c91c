"""Guest kernels. A kernel source yields a bzImage and the modules the agent must load, in order.

`DistroKernel` takes the distribution's prebuilt virtual-machine kernel (Debian's cloud kernel, Ubuntu's kvm or
virtual kernel), discovered through apt so that no release is hard-coded.
"""

from __future__ import annotations

import hashlib
import lzma
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import HCError

# Meta packages tried in order; each depends on the current versioned kernel package.
META_PACKAGES = ("linux-image-cloud-amd64", "linux-image-kvm", "linux-image-virtual", "linux-image-amd64")
# What the guest needs: virtio-mmio transport, virtio-serial ports, entropy, the pod share, disks, network.
WANTED_MODULES = ("virtio_mmio", "virtio_console", "virtio-rng", "virtiofs", "virtio_blk", "virtio_net",
                  "9pnet_virtio", "9p")
REQUIRED_MODULES = ("virtio_mmio", "virtio_console")


class KernelError(HCError):
    pass


@dataclass(frozen=True)
class Kernel:
    release: str
    image: Path
    modules: tuple[Path, ...]  # uncompressed .ko files, in load order

    def digest(self) -> str:
        h = hashlib.sha256(self.release.encode())
        for p in (self.image, *self.modules):
            h.update(p.name.encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
        return h.hexdigest()


def run(argv: list[str], cwd: Path | None = None) -> str:
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        raise KernelError(f"{' '.join(argv)} failed: {r.stderr.strip()[-500:]}")
    return r.stdout


def resolve_package() -> str:
    """The versioned kernel package behind the first meta package apt knows."""
    for meta in META_PACKAGES:
        r = subprocess.run(["apt-cache", "depends", "--important", meta], capture_output=True, text=True)
        if r.returncode:
            continue
        for line in r.stdout.splitlines():
            m = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
            if m and "-unsigned" not in m.group(1):
                return m.group(1)
    raise KernelError(
        f"no guest kernel package found (tried {', '.join(META_PACKAGES)}); run 'apt-get update' and retry"
    )


def _modinfo_depends(ko: bytes) -> list[str]:
    m = re.search(rb"(?:^|\0)depends=([^\0]*)", ko)
    return [d for d in m.group(1).decode().split(",") if d] if m else []


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    return data


def collect_modules(moddir: Path, dest: Path) -> list[Path]:
    """Copies the wanted modules and their dependencies, uncompressed, in dependency order."""
    index: dict[str, Path] = {}
    for ko in moddir.rglob("*.ko*"):
        name = re.sub(r"\.ko(\.xz|\.zst|\.gz)?$", "", ko.name)
        index[name] = ko
        index.setdefault(name.replace("-", "_"), ko)
    builtin = set()
    if (moddir / "modules.builtin").exists():
        builtin = {Path(line).name.split(".ko")[0] for line in (moddir / "modules.builtin").read_text().split()}
    order: list[str] = []
    blobs: dict[str, bytes] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order or name in chain:
            return
        ko = index.get(name) or index.get(name.replace("-", "_"))
        if ko is None:
            if name in REQUIRED_MODULES and name not in builtin and name.replace("-", "_") not in builtin:
                raise KernelError(f"kernel has no module {name} and does not build it in")
            return
        blobs[name] = _read_module(ko)
        for dep in _modinfo_depends(blobs[name]):
            visit(dep, (*chain, name))
        order.append(name)

    for wanted in WANTED_MODULES:
        visit(wanted, ())
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in order:
        p = dest / f"{name}.ko"
        p.write_bytes(blobs[name])
        out.append(p)
    return out


def distro_kernel(cache: Path) -> Kernel:
    """Downloads (once) and unpacks the distribution's VM kernel into cache/kernel-<package>/."""
    package = resolve_package()
    wanted = hashlib.sha256(",".join(WANTED_MODULES).encode()).hexdigest()[:8]
    home = cache / f"kernel-{package}-{wanted}"
    stamp = home / "release"
    if not stamp.exists():
        tmp = Path(tempfile.mkdtemp(prefix=".kernel-", dir=cache))
        try:
            run(["apt-get", "download", package], cwd=tmp)
            deb = next(tmp.glob("*.deb"))
            run(["dpkg-deb", "-x", str(deb), str(tmp / "x")])
            images = sorted((tmp / "x" / "boot").glob("vmlinuz-*"))
            if not images:
                raise KernelError(f"{package} holds no /boot/vmlinuz-*")
            release = images[0].name.removeprefix("vmlinuz-")
            build = tmp / "out"
            build.mkdir()
            shutil.copy2(images[0], build / "vmlinuz")
            mods = collect_modules(tmp / "x" / "lib" / "modules" / release, build / "modules")
            (build / "modules.order").write_text("".join(m.name + "\n" for m in mods))
            (build / "release").write_text(release + "\n")
            if home.exists():
                shutil.rmtree(home)
            build.rename(home)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    release = stamp.read_text().strip()
    order = (home / "modules.order").read_text().split()
    return Kernel(release, home / "vmlinuz", tuple(home / "modules" / m for m in order))


def serves_9p(image: Path) -> bool:
    """Whether the guest booted from kernel `image` (of the assets cache) can mount 9p, which VM templates and the
    pool need: ours always can (built in); a distribution's only if it ships the modules (Debian's cloud kernel
    does not: pods then boot cold until ours is built)."""
    home = image.parent
    return home.name.startswith("kernel-own-") or (home / "modules" / "9p.ko").exists()
