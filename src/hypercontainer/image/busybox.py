"""Builds the default `busybox:latest` image offline, as a docker-archive, from the host's static busybox."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
EPOCH = 1_700_000_000
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSWD = "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\n" \
         "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\n"


def find_static_busybox() -> Path:
    for c in BUSYBOX_CANDIDATES:
        p = Path(c)
        if p.exists() and b"ld-linux" not in p.read_bytes()[:8192] and _is_static(p):
            return p
    raise SystemExit("no static busybox found: install Debian's busybox-static")


def _is_static(p: Path) -> bool:
    r = subprocess.run(["ldd", str(p)], capture_output=True, text=True)
    return "not a dynamic executable" in (r.stdout + r.stderr) or "statically linked" in r.stdout


def _add(tf: tarfile.TarFile, name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.linkname = kind, mode, EPOCH, link
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data) if data else None)


def layer_tar(busybox: Path) -> bytes:
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d, mode in (("bin", 0o755), ("sbin", 0o755), ("usr", 0o755), ("usr/bin", 0o755), ("usr/sbin", 0o755),
                        ("etc", 0o755), ("root", 0o700), ("home", 0o755), ("tmp", 0o1777), ("var", 0o755),
                        ("proc", 0o555), ("sys", 0o555), ("dev", 0o755)):
            _add(tf, d, tarfile.DIRTYPE, mode)
        _add(tf, "bin/busybox", tarfile.REGTYPE, 0o755, busybox.read_bytes())
        for a in sorted(set(applets)):
            if a != "bin/busybox" and a.count("/") >= 1:
                _add(tf, a, tarfile.SYMTYPE, 0o777, link="/bin/busybox")
        _add(tf, "etc/passwd", tarfile.REGTYPE, 0o644, PASSWD.encode())
        _add(tf, "etc/group", tarfile.REGTYPE, 0o644, GROUP.encode())
    return buf.getvalue()


def build(out: Path, tag: str = "busybox:latest") -> Path:
    bb = find_static_busybox()
    layer = layer_tar(bb)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
        "config": {"Cmd": ["sh"], "Env": [f"PATH={PATH}"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": f"hypercontainer: busybox from {bb}"}],
    }, sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": ["layer/layer.tar"]}]).encode()
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tf:
        _add(tf, "layer", tarfile.DIRTYPE, 0o755)
        _add(tf, "layer/layer.tar", tarfile.REGTYPE, 0o644, layer)
        _add(tf, config_name, tarfile.REGTYPE, 0o644, config)
        _add(tf, "manifest.json", tarfile.REGTYPE, 0o644, manifest)
    tmp.rename(out)
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "build/busybox.tar")
    target.parent.mkdir(parents=True, exist_ok=True)
    print(build(target))
