"""What `make critest` builds once and keeps under build/critest/: critest and crictl from the cri-tools module,
a static busybox with every defconfig applet (ipcs and pgrep among them), the tiny programs some test images run,
and one OCI image layout holding every image critest pulls."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

CRI_TOOLS = "sigs.k8s.io/cri-tools"
CRI_TOOLS_VERSION = "v1.37.0"
HERE = Path(__file__).resolve().parent
EPOCH = 1_700_000_000
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def log(msg: str) -> None:
    print(f">> {msg}", flush=True)


def run(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
        logfile: Path | None = None) -> None:
    """Runs cmd; its output goes to logfile (shown in full only when it fails)."""
    with open(logfile or os.devnull, "ab") as out:
        r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, stdout=out if logfile else subprocess.PIPE,
                           stderr=subprocess.STDOUT)
    if r.returncode != 0:
        text = logfile.read_text(errors="replace") if logfile else r.stdout.decode(errors="replace")
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{text[-4000:]}")


# ---- critest and crictl ----------------------------------------------------------------------------------------
def cri_tools(out: Path) -> tuple[Path, Path]:
    """critest (the e2e suite, as a test binary) and crictl, built from the module the Go proxy serves."""
    critest, crictl, stamp = out / "bin/critest", out / "bin/crictl", out / "bin/.cri-tools-version"
    if critest.exists() and crictl.exists() and stamp.exists() and stamp.read_text() == CRI_TOOLS_VERSION:
        return critest, crictl
    if not shutil.which("go"):
        raise SystemExit("critest needs Go: cri-tools v1.37.0 wants go 1.26.6, which a go >= 1.21 fetches through the "
                         "Go module proxy (Debian 12's golang, 1.19, is too old)")
    log(f"building critest and crictl {CRI_TOOLS_VERSION} (about 2 minutes the first time)")
    env = dict(os.environ, GOFLAGS="-buildvcs=false", CGO_ENABLED="0")
    info = json.loads(subprocess.run(["go", "mod", "download", "-json", f"{CRI_TOOLS}@{CRI_TOOLS_VERSION}"],
                                     check=True, capture_output=True, text=True, env=env).stdout)
    src = out / "src/cri-tools"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(info["Dir"], src)
    subprocess.run(["chmod", "-R", "u+w", str(src)], check=True)
    (out / "bin").mkdir(parents=True, exist_ok=True)
    blog = out / "bin/build.log"
    blog.unlink(missing_ok=True)
    run("go", "test", "-c", "-o", critest, "./cmd/critest", cwd=src, env=env, logfile=blog)
    run("go", "build", "-o", crictl, "./cmd/crictl", cwd=src, env=env, logfile=blog)
    stamp.write_text(CRI_TOOLS_VERSION)
    return critest, crictl


# ---- busybox ---------------------------------------------------------------------------------------------------
def _deb_src_sources(dst: Path) -> None:
    """The host's Debian (or Ubuntu) `deb` sources, as `deb-src`: apt-get source reads them from our own
    directories, so the host's apt configuration stays as it is."""
    parts = dst / "sources.list.d"
    parts.mkdir(parents=True, exist_ok=True)
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    n = 0
    for f in files:
        if not f.is_file():
            continue
        if f.suffix == ".sources":
            text = "\n".join("Types: deb-src" if line.startswith("Types:") and "deb" in line.split() else line
                             for line in f.read_text().splitlines())
        elif f.suffix == ".list" or f.name == "sources.list":
            text = "\n".join("deb-src " + line.split(None, 1)[1] for line in f.read_text().splitlines()
                             if line.startswith("deb "))
        else:
            continue
        (parts / f"{n}-{f.name}").write_text(text + "\n")
        n += 1


def busybox(out: Path) -> Path:
    """A static busybox from the distribution's source package with busybox's defconfig. Debian's busybox-static
    lacks ipcs and pgrep, which critest's specs run. Set CRITEST_BUSYBOX to a static busybox to skip the build."""
    if os.environ.get("CRITEST_BUSYBOX"):
        return Path(os.environ["CRITEST_BUSYBOX"])
    binary = out / "busybox/busybox"
    if binary.exists():
        return binary
    log("building a static busybox from the distribution's source package (about a minute)")
    d = out / "busybox"
    shutil.rmtree(d, ignore_errors=True)
    apt = d / "apt"
    (apt / "lists/partial").mkdir(parents=True)
    _deb_src_sources(apt)
    opts = ["-o", f"Dir::Etc::SourceList={apt}/none", "-o", f"Dir::Etc::SourceParts={apt}/sources.list.d",
            "-o", f"Dir::State::Lists={apt}/lists", "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
            "-o", "APT::Sandbox::User=root", "-q"]
    blog = d / "build.log"
    run("apt-get", *opts, "update", logfile=blog)
    (d / "dl").mkdir()
    run("apt-get", *opts, "source", "--download-only", "busybox", cwd=d / "dl", logfile=blog)
    dsc = next((d / "dl").glob("*.dsc"))
    run("dpkg-source", "-x", dsc, d / "src", logfile=blog)
    src = d / "src"
    run("make", "defconfig", cwd=src, logfile=blog)
    cfg = src / ".config"
    cfg.write_text(cfg.read_text().replace("# CONFIG_STATIC is not set", "CONFIG_STATIC=y"))
    run("make", f"-j{os.cpu_count() or 2}", "busybox", cwd=src, logfile=blog)
    applets = subprocess.run([src / "busybox", "--list"], capture_output=True, text=True, check=True).stdout.split()
    missing = {"ipcs", "pgrep", "pidof", "netstat", "hostname"} - set(applets)
    if missing:
        raise SystemExit(f"the busybox built lacks {sorted(missing)}")
    shutil.copy2(src / "busybox", binary)
    for f in [d / "dl", src, *d.glob("*.tar.*")]:  # keep the binary and the build log
        shutil.rmtree(f) if f.is_dir() else f.unlink()
    return binary


# ---- the test programs -----------------------------------------------------------------------------------------
def programs(out: Path) -> dict[str, Path]:
    """pause, nnp (nonewprivs' setuid helper) and nginx (a stand-in), static with musl."""
    d = out / "progs"
    d.mkdir(parents=True, exist_ok=True)
    res = {}
    for c in sorted((HERE / "progs").glob("*.c")):
        exe = d / c.stem
        if not exe.exists() or exe.stat().st_mtime < c.stat().st_mtime:
            run("musl-gcc", "-static", "-Os", "-s", "-Wall", "-o", exe, c)
        res[c.stem] = exe
    return res


# ---- images ----------------------------------------------------------------------------------------------------
PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""
GROUP = """root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
mail:x:8:
wheel:x:10:root
www-data:x:33:
operator:x:37:
staff:x:50:
users:x:100:
nobody:x:65534:
"""
# httpd's image: busybox's httpd, and a line with "httpd" in the container's log.
HTTPD_FOREGROUND = """#!/bin/sh
echo "httpd: serving /usr/local/apache2/htdocs on port 80"
httpd -f -p 80 -h /usr/local/apache2/htdocs &
trap 'kill $!; exit 0' TERM INT
wait
"""


@dataclass
class Layer:
    """Files of one layer: path -> bytes (a file), None (a directory), ('link', target) or ('hard', target)."""
    files: dict[str, bytes | tuple[str, str] | None] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)

    def tar(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            # In name order, hard links last (after what they link to).
            for name in sorted(self.files, key=lambda n: (isinstance(self.files[n], tuple)
                                                          and self.files[n][0] == "hard", n)):
                v = self.files[name]
                ti = tarfile.TarInfo(name)
                ti.mtime = EPOCH
                if v is None:
                    ti.type, ti.mode = tarfile.DIRTYPE, self.modes.get(name, 0o755)
                    tf.addfile(ti)
                elif isinstance(v, tuple):
                    ti.type, ti.linkname = (tarfile.SYMTYPE, tarfile.LNKTYPE)[v[0] == "hard"], v[1]
                    ti.mode = 0o777 if v[0] == "link" else self.modes.get(v[1], 0o755)
                    tf.addfile(ti)
                else:
                    ti.mode, ti.size = self.modes.get(name, 0o644), len(v)
                    tf.addfile(ti, io.BytesIO(v))
        return buf.getvalue()


def busybox_layer(bb: Path) -> Layer:
    layer = Layer()
    for d, mode in (("bin", 0o755), ("sbin", 0o755), ("usr", 0o755), ("usr/bin", 0o755), ("usr/sbin", 0o755),
                    ("etc", 0o755), ("root", 0o700), ("home", 0o755), ("tmp", 0o1777), ("var", 0o755),
                    ("var/run", 0o755), ("var/www", 0o755), ("proc", 0o555), ("sys", 0o555), ("dev", 0o755)):
        layer.files[d], layer.modes[d] = None, mode
    layer.files["bin/busybox"], layer.modes["bin/busybox"] = bb.read_bytes(), 0o755
    applets = subprocess.run([str(bb), "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for a in applets:  # hard links, as in the busybox image: masking /bin/ls must not mask them all
        if a != "bin/busybox":
            layer.files[a] = ("hard", "bin/busybox")
    layer.files["etc/passwd"], layer.files["etc/group"] = PASSWD.encode(), GROUP.encode()
    return layer


@dataclass
class Image:
    refs: list[str]                      # repository:tag, as critest names it without the registry host
    layers: list[Layer]
    config: dict[str, object] = field(default_factory=dict)


def images(bb: Path, progs: dict[str, Path]) -> list[Image]:
    """Every image critest v1.37.0 pulls (pkg/validate/consts.go, pkg/framework/util.go and images/ in the
    module), built from busybox and our programs. The digest-pinned test-image-digest can't be rebuilt."""
    base = busybox_layer(bb)
    sh = {"Cmd": ["sh"]}

    def one_file(name: str) -> Layer:
        return Layer({name: b""})

    def prog(name: str, path: str, mode: int = 0o755) -> Layer:
        return Layer({path: progs[name].read_bytes()}, {path: mode})

    staging = "k8s-staging-cri-tools/"
    nginx = {"Cmd": ["nginx", "-g", "daemon off;"], "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGQUIT"}
    predefined = Layer({
        "etc/passwd": (PASSWD + "default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n").encode(),
        "etc/group": (GROUP + "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n").encode(),
        "home/default-user": None})
    httpd = Layer({"usr/local/apache2": None, "usr/local/apache2/htdocs": None,
                   "usr/local/apache2/htdocs/index.html": b"<html><body><h1>It works!</h1></body></html>\n",
                   "usr/local/bin/httpd-foreground": HTTPD_FOREGROUND.encode()},
                  {"usr/local/bin/httpd-foreground": 0o755})
    out = [
        Image(["e2e-test-images/busybox:1.29-2"], [base], sh),
        Image(["e2e-test-images/httpd:2.4.39-4"], [base, httpd],
              {"Cmd": ["httpd-foreground"], "ExposedPorts": {"80/tcp": {}}}),
        Image(["e2e-test-images/nginx:1.14-2"], [base, prog("nginx", "usr/sbin/nginx")], nginx),
        Image([f"{staging}hostnet-nginx-amd64:latest"], [base, prog("nginx", "usr/sbin/nginx")],
              {**nginx, "Env": [f"PATH={PATH}", "NGINX_PORT=12003"], "ExposedPorts": {"12003/tcp": {}}}),
        Image(["e2e-test-images/nonewprivs:1.3"], [base, prog("nnp", "usr/local/bin/nnp", 0o4755)],
              {"Entrypoint": ["/usr/local/bin/nnp"]}),
        Image(["pause:3.9"], [prog("pause", "pause")], {"Entrypoint": ["/pause"]}),
        # The runtime's own sandbox image: another image, as a spec removes pause:3.9 (by ID, so all its tags).
        Image(["pause:3.9-critest"], [prog("pause", "pause")],
              {"Entrypoint": ["/pause"], "Labels": {"critest": "sandbox image"}}),
        Image([f"{staging}test-image-tags:1", f"{staging}test-image-tags:2", f"{staging}test-image-tags:3"],
              [base, one_file("same-image")], sh),
        Image([f"{staging}test-image-tag:test"], [base, one_file("test")], sh),
        Image([f"{staging}test-image-tag:all"], [base, one_file("all")], sh),
        Image([f"{staging}test-image-predefined-group:latest"], [base, predefined], {**sh, "User": "1000"}),
    ]
    for name in ("test-image-1", "test-image-2", "test-image-3", "test-image-latest", "test-image-digest"):
        out.append(Image([f"{staging}{name}:latest"], [base, one_file(name)], sh))
    for name, user in (("test-image-user-uid", "1002"), ("test-image-user-username", "www-data"),
                       ("test-image-user-uid-group", "1003:1004"), ("test-image-user-username-group", "www-data:1004")):
        out.append(Image([f"{staging}{name}:latest"], [base], {**sh, "User": user}))
    return out


class Layout:
    """An OCI image layout (image-spec's image-layout.md): blobs by digest and index.json, one entry per ref."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.manifests: list[dict[str, object]] = []
        (path / "blobs/sha256").mkdir(parents=True, exist_ok=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def blob(self, data: bytes, media_type: str) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        p = self.path / "blobs/sha256" / digest
        if not p.exists():
            p.write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def add(self, image: Image, cache: dict[int, tuple[dict[str, object], str]]) -> str:
        descs, diff_ids = [], []
        for layer in image.layers:
            if id(layer) not in cache:  # a layer shared by many images is packed once
                raw = layer.tar()
                gz = gzip.compress(raw, compresslevel=6, mtime=0)
                cache[id(layer)] = (self.blob(gz, "application/vnd.oci.image.layer.v1.tar+gzip"),
                                    "sha256:" + hashlib.sha256(raw).hexdigest())
            desc, diff_id = cache[id(layer)]
            descs.append(desc)
            diff_ids.append(diff_id)
        cfg = {"Env": [f"PATH={PATH}"], **image.config}
        config = {"architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z", "config": cfg,
                  "rootfs": {"type": "layers", "diff_ids": diff_ids},
                  "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "tools/critest/build.py"}
                              for _ in descs]}
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": self.blob(json.dumps(config, sort_keys=True).encode(),
                                        "application/vnd.oci.image.config.v1+json"),
                    "layers": descs}
        mdesc = self.blob(json.dumps(manifest, sort_keys=True).encode(), manifest["mediaType"])
        for ref in image.refs:
            self.manifests.append({**mdesc, "annotations": {"org.opencontainers.image.ref.name": ref}})
        return str(mdesc["digest"])

    def close(self) -> None:
        (self.path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": self.manifests},
                                                         indent=1, sort_keys=True))


def image_layout(out: Path, bb: Path, progs: dict[str, Path]) -> tuple[Path, dict[str, str]]:
    """Writes (or reuses) build/critest/images: returns the layout and {ref: manifest digest}."""
    path = out / "images"
    inputs = hashlib.sha256()
    for f in (bb, *progs.values(), Path(__file__)):
        inputs.update(hashlib.sha256(f.read_bytes()).digest())
    stamp = path / "inputs.sha256"
    refs_file = path / "refs.json"
    if stamp.exists() and refs_file.exists() and stamp.read_text() == inputs.hexdigest():
        return path, json.loads(refs_file.read_text())
    log("writing the test images (OCI layout)")
    shutil.rmtree(path, ignore_errors=True)
    layout = Layout(path)
    cache: dict[int, tuple[dict[str, object], str]] = {}
    refs = {}
    for image in images(bb, progs):
        digest = layout.add(image, cache)
        refs.update({ref: digest for ref in image.refs})
    layout.close()
    refs_file.write_text(json.dumps(refs, indent=1, sort_keys=True))
    stamp.write_text(inputs.hexdigest())
    return path, refs
