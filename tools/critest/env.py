"""The services a critest run needs, and their cleanup: a local registry that stands in for registry.k8s.io,
k8s.gcr.io, gcr.io and docker.io; a private containerd (CRI plugin, CNI bridge, the runc shim with runc or runv);
and the removal of all they leave behind, also after a run that was killed."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from build import log

# Registries critest pulls from, redirected to the local one: repository paths stay the same.
UPSTREAMS = {"registry.k8s.io": "https://registry.k8s.io", "k8s.gcr.io": "https://k8s.gcr.io",
             "gcr.io": "https://gcr.io", "docker.io": "https://registry-1.docker.io"}
SANDBOX_IMAGE = "registry.k8s.io/pause:3.9-critest"
CNI_BIN = "/usr/lib/cni"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


# ---- processes -------------------------------------------------------------------------------------------------
def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def procs_mentioning(path: Path) -> list[int]:
    """Processes whose command line names a path under `path` (our containerd, its shims, our registry)."""
    needle, me = str(path), os.getpid()
    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and int(p.name) != me and needle in cmdline(int(p.name))]


def stop_pid(pid: int, timeout: float = 20) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


# ---- the registry ----------------------------------------------------------------------------------------------
class Registry:
    """Debian's docker-registry on a free 127.0.0.1 port; its storage persists under build/critest/registry."""

    def __init__(self, d: Path) -> None:
        self.dir, self.port, self.proc = d, 0, None
        self.config = d / "config.yml"

    def start(self, refs: dict[str, str]) -> None:
        for pid in procs_mentioning(self.config):  # one a killed run left
            stop_pid(pid)
        if self.pushed() != refs:  # other images: start afresh rather than pile up blobs
            shutil.rmtree(self.dir / "storage", ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config.write_text(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.dir}/storage\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n")
        with open(self.dir / "registry.log", "ab") as out:
            self.proc = subprocess.Popen(["docker-registry", "serve", str(self.config)], stdout=out, stderr=out,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

        def up() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        wait_for(up, 30, "the registry")

    def pushed(self) -> dict[str, str] | None:
        stamp = self.dir / "storage/pushed.json"
        return json.loads(stamp.read_text()) if stamp.exists() else None

    def push(self, layout: Path, refs: dict[str, str]) -> None:
        """Copies every ref of the OCI layout into the registry, unless it already holds these very images."""
        if self.pushed() == refs:
            return
        log(f"pushing {len(refs)} test images to the local registry")
        for ref in sorted(refs):
            r = subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", "--preserve-digests",
                                "--dest-tls-verify=false", f"oci:{layout}:{ref}",
                                f"docker://127.0.0.1:{self.port}/{ref}"], capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"skopeo copy {ref}: {r.stderr.strip()}")
        (self.dir / "storage/pushed.json").write_text(json.dumps(refs, sort_keys=True))

    def stop(self) -> None:
        if self.proc:
            stop_pid(self.proc.pid, 10)
            self.proc = None


def write_mirrors(certs_d: Path, port: int) -> None:
    """containerd's registry.config_path: each upstream host resolves and pulls from the local registry."""
    for host, server in UPSTREAMS.items():
        d = certs_d / host
        d.mkdir(parents=True, exist_ok=True)
        (d / "hosts.toml").write_text(f'server = "{server}"\n\n[host."http://127.0.0.1:{port}"]\n'
                                      '  capabilities = ["pull", "resolve"]\n')


# ---- containerd ------------------------------------------------------------------------------------------------
class Network:
    """The CNI network of our containerd: a bridge and a subnet of its own (not podman's 10.88/16, nor hyperd's
    10.77/16), host-local IPAM with its data under our run directory, and portmap for host ports."""

    def __init__(self, name: str, bridge: str, subnet: str) -> None:
        self.name, self.bridge, self.subnet = name, bridge, ipaddress.ip_network(subnet)

    def conflist(self, ipam_dir: Path) -> str:
        return json.dumps({
            "cniVersion": "1.0.0", "name": self.name,
            "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": str(self.subnet)}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(ipam_dir)}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ]}, indent=1)


class Containerd:
    """A containerd of our own: root, state, sockets and config under `d`; CRI enabled with one runtime, the
    runc shim (io.containerd.runc.v2) running `binary` (runc or runv) with its state under d/runtime."""

    def __init__(self, d: Path, binary: str, net: Network, env: dict[str, str], crictl: Path) -> None:
        self.dir, self.binary, self.net, self.env, self.crictl_bin = d, binary, net, env, crictl
        self.sock = d / "containerd.sock"
        self.config = d / "config.toml"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.sock}"

    def write_config(self, registry_port: int) -> None:
        d = self.dir
        for sub in ("net.d", "certs.d", "runtime", "opt"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "net.d/10-critest.conflist").write_text(self.net.conflist(d / "ipam"))
        write_mirrors(d / "certs.d", registry_port)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        self.config.write_text(f"""version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{self.sock}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[{cri}]
  sandbox_image = "{SANDBOX_IMAGE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "{free_port()}"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        BinaryName = "{self.binary}"
        Root = "{d}/runtime"
  [{cri}.cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{d}/net.d"
  [{cri}.registry]
    config_path = "{d}/certs.d"
""")

    def start(self, logfile: Path) -> None:
        (self.dir / "started").write_text(str(time.time()))
        with open(logfile, "ab") as out:
            self.proc = subprocess.Popen(["containerd", "--config", str(self.config)], stdout=out, stderr=out,
                                         stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        wait_for(lambda: self.proc.poll() is not None or self.crictl_ok("info"), 60, "containerd's CRI")
        if self.proc.poll() is not None:
            raise SystemExit(f"containerd exited ({self.proc.returncode}); see {logfile}")

    def crictl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.crictl_bin), "--runtime-endpoint", self.endpoint, "--image-endpoint",
                               self.endpoint, "--timeout", "60s", *args], capture_output=True, text=True,
                              timeout=timeout)

    def crictl_ok(self, *args: str) -> bool:
        try:
            return self.crictl(*args, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False


# ---- cleanup ---------------------------------------------------------------------------------------------------
def mounts_under(d: Path) -> list[str]:
    prefix = str(d.resolve()) + "/"
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if mp.startswith(prefix):
            out.append(mp)
    return sorted(out, key=len, reverse=True)


def unmount_all(d: Path) -> None:
    for _ in range(3):
        mps = mounts_under(d)
        if not mps:
            return
        for mp in mps:
            if subprocess.run(["umount", mp], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", mp], capture_output=True)


def netns_in_subnet(net: Network) -> list[str]:
    """Network namespaces (under /run/netns, where containerd's CRI makes them) with an address on our subnet."""
    found = []
    for ns in sorted(Path("/run/netns").glob("*")) if Path("/run/netns").is_dir() else []:
        r = subprocess.run(["nsenter", f"--net={ns}", "ip", "-4", "-o", "addr", "show"], capture_output=True,
                           text=True)
        for m in re.finditer(r"inet (\S+)", r.stdout):
            if ipaddress.ip_interface(m.group(1)).ip in net.subnet:
                found.append(ns.name)
                break
    return found


def drop_portmap_rules(net: Network) -> None:
    """portmap's NAT rules for our network (their comments name it) and the per-sandbox chains they jump to:
    containerd removes them when it stops a sandbox; this is for sandboxes a killed run left."""
    r = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True)
    if r.returncode != 0:
        return
    chains = set()
    for rule in r.stdout.splitlines():
        if rule.startswith("-A ") and f'name: \\"{net.name}\\"' in rule:
            subprocess.run(["sh", "-c", f"iptables -t nat {'-D' + rule[2:]}"], capture_output=True)
            m = re.search(r"-j (CNI-\S+)", rule)
            if m and m.group(1).startswith(("CNI-DN-", "CNI-SN-")):
                chains.add(m.group(1))
    for c in chains:
        subprocess.run(["iptables", "-t", "nat", "-F", c], capture_output=True)
        subprocess.run(["iptables", "-t", "nat", "-X", c], capture_output=True)


def shm_segments() -> dict[int, tuple[int, int, int, int]]:
    """SysV shared memory: shmid -> (size, nattch, creator pid, ctime)."""
    out = {}
    with contextlib.suppress(OSError):
        lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
        for line in lines:
            f = line.split()
            out[int(f[1])] = (int(f[3]), int(f[6]), int(f[4]), int(f[13]))
    return out


def drop_test_shm(since: float, before: set[int] | None = None) -> int:
    """The 1 MiB segments critest's HostIpc specs make with ipcmk on the host and leave: unattached, made since
    the run started by a process that is gone (and not there before the run, when that is known)."""
    n = 0
    for shmid, (size, nattch, cpid, ctime) in shm_segments().items():
        ours = size == 1048576 and nattch == 0 and ctime >= int(since) and (before is None or shmid not in before)
        if ours and not Path(f"/proc/{cpid}").exists() and \
                subprocess.run(["ipcrm", "-m", str(shmid)], capture_output=True).returncode == 0:
            n += 1
    return n


def cleanup(d: Path, binary: str, net: Network, crictl: Path | None, environ: dict[str, str],
            shm_before: set[int] | None = None) -> None:
    """Removes all that a run in `d` made, whether it ended well or was killed: sandboxes (through containerd
    when it still answers), containerd, its shims and the runtime's containers, mounts under `d`, our CNI netns,
    bridge and NAT rules, the SysV segments critest left, then `d`."""
    if not d.exists() and not Path(f"/sys/class/net/{net.bridge}").exists():
        return
    started = float((d / "started").read_text()) if (d / "started").exists() else time.time()
    sock = d / "containerd.sock"
    if crictl and sock.exists():
        ep = f"unix://{sock}"
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([str(crictl), "--runtime-endpoint", ep, "--image-endpoint", ep, "--timeout", "30s",
                            "rmp", "--all", "--force"], capture_output=True, timeout=300)
    config = str(d / "config.toml")
    for pid in procs_mentioning(d):
        if config in cmdline(pid):
            stop_pid(pid, 20)
    # The runtime's containers: runc and runv both keep <root>/<id>/state.json.
    for state in sorted(d.glob("runtime/*/*/state.json")):
        root, cid = state.parent.parent, state.parent.name
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([binary, "--root", str(root), "delete", "--force", cid], capture_output=True,
                           timeout=60, env=environ)
    for pid in procs_mentioning(d):  # shims, and anything else still naming our directory
        stop_pid(pid, 5)
    unmount_all(d)
    for ns in netns_in_subnet(net):
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
    if Path(f"/sys/class/net/{net.bridge}").exists():
        subprocess.run(["ip", "link", "delete", net.bridge], capture_output=True)
    drop_portmap_rules(net)
    n = drop_test_shm(started, shm_before)
    if n:
        log(f"removed {n} SysV shared memory segment(s) critest left")
    left = mounts_under(d)
    if left:
        log(f"warning: still mounted, so {d} is kept: {left[:3]}")
    else:
        shutil.rmtree(d, ignore_errors=True)
