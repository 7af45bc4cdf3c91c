"""The services a critest run needs, and their cleanup: a local registry that stands in for registry.k8s.io,
k8s.gcr.io, gcr.io and docker.io; a private containerd (CRI plugin, CNI bridge, the runc shim with runc or runv)
or a private hyperd (its own CRI, CNI network and registry mirrors); and the removal of all they leave behind,
also after a run that was killed."""

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

    def __init__(self, name: str, bridge: str, subnet: str, loopback: bool = False) -> None:
        self.name, self.bridge, self.subnet = name, bridge, ipaddress.ip_network(subnet)
        self.loopback = loopback  # containerd brings up loopback itself; other runtimes want the plugin

    def conflist(self, ipam_dir: Path) -> str:
        return json.dumps({
            "cniVersion": "1.0.0", "name": self.name,
            "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": str(self.subnet)}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(ipam_dir)}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
                *([{"type": "loopback"}] if self.loopback else []),
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


def crictl_run(crictl: Path, endpoint: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(crictl), "--runtime-endpoint", endpoint, "--image-endpoint", endpoint, "--timeout",
                           "60s", *args], capture_output=True, text=True, timeout=timeout)


# The host directories critest's specs make with os.MkdirTemp("") (pod log dirs, volumes, seccomp profiles).
CRITEST_TMP = re.compile(r"^(podLogTest\d+|test[0-9a-f]{64}\d+|seccomp-tests\d+)$")


def sweep_tmp(tmp: Path = Path("/tmp")) -> int:
    """What critest runs made in /tmp before their TMPDIR was under the run directory (or critest run by hand):
    directories named as critest names them, with nothing mounted below; `--clean` only."""
    n = 0
    for p in sorted(tmp.iterdir()) if tmp.is_dir() else []:
        if CRITEST_TMP.match(p.name) and p.is_dir() and not p.is_symlink():
            unmount_all(p)
            if not mounts_under(p):
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    return n


def critest_tmp(d: Path) -> Path:
    """critest's TMPDIR: the host directories its specs make (volumes, pod log directories: os.MkdirTemp("")) and
    do not always remove go here, under the run directory, not into /tmp; mode 1777 like /tmp."""
    t = d / "tmp"
    t.mkdir(parents=True, exist_ok=True)
    t.chmod(0o1777)
    return t


# ---- hyperd ----------------------------------------------------------------------------------------------------
class Hyperd:
    """A hyperd of our own, everything under `d`: state (--root), run directory, API and CRI sockets, registry
    mirrors (certs.d, the same files containerd reads), a CNI network of its own (conflist, IPAM data, result
    cache, network namespaces), with --no-live-restore (its pods stop with it) and --network none for its own
    non-CRI pods (critest makes none)."""

    def __init__(self, d: Path, hyperd: Path, assets: Path, net: Network, crictl: Path, debug: bool = False) -> None:
        self.dir, self.hyperd, self.assets, self.net, self.crictl_bin = d, hyperd, assets, net, crictl
        self.hyperctl_bin = hyperd.parent / "hyperctl"
        self.debug = debug
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = hyperd_env(d, assets)

    @property
    def sock(self) -> Path:
        return self.dir / "run/cri.sock"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.sock}"

    def write_config(self, registry_port: int) -> None:
        d = self.dir
        for sub in ("net.d", "certs.d", "state", "run", "cni", "netns"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "net.d/10-critest.conflist").write_text(self.net.conflist(d / "ipam"))
        write_mirrors(d / "certs.d", registry_port)

    def command(self) -> list[str]:
        d = self.dir
        return [str(self.hyperd), "--root", str(d / "state"), "--run", str(d / "run"),
                "--socket", str(d / "run/hyperd.sock"), "--assets", str(self.assets),
                "--registry-config", str(d / "certs.d"), "--network", "none", "--no-live-restore",
                "--pool", "0",  # CRI sandboxes join the CNI's namespace: no pool VM could serve them
                "--cri-socket", str(self.sock), "--cri-streaming-address", "127.0.0.1",
                "--cni-conf-dir", str(d / "net.d"), "--cni-bin-dir", CNI_BIN, "--cni-cache-dir", str(d / "cni"),
                "--cni-netns-dir", str(d / "netns"), "--cni-network", self.net.name,
                *(["--debug"] if self.debug else [])]

    def start(self, logfile: Path) -> None:
        (self.dir / "started").write_text(str(time.time()))
        with open(logfile, "ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                         env=self.env, start_new_session=True)
        # the first start may probe the accelerator and build the guest assets: minutes under TCG
        wait_for(lambda: self.proc.poll() is not None or self.crictl_ok("version"), 900, "hyperd's CRI")
        if self.proc.poll() is not None:
            raise SystemExit(f"hyperd exited ({self.proc.returncode}); see {logfile}")

    def crictl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return crictl_run(self.crictl_bin, self.endpoint, *args, timeout=timeout)

    def crictl_ok(self, *args: str) -> bool:
        try:
            return self.crictl(*args, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def describe(self) -> str:
        """hyperd's version, accelerator and the CRI's conditions, in a line."""
        parts = []
        with contextlib.suppress(Exception):
            info = json.loads(subprocess.run([str(self.hyperctl_bin), "info", "--json"], env=self.env,
                                             capture_output=True, text=True, timeout=30).stdout)
            parts.append(f"accelerator {info['accelerator']['name']}")
        with contextlib.suppress(Exception):
            status = json.loads(self.crictl("info", "-o", "json").stdout)["status"]
            parts += [f"{c['type']}={c['status']}" + (f" ({c.get('message')})" if c.get("message") else "")
                      for c in status.get("conditions", [])]
        with contextlib.suppress(Exception):
            v = self.crictl("version").stdout
            m = re.search(r"RuntimeVersion:\s*(\S+)", v)
            parts.insert(0, f"hyperd {m.group(1) if m else '?'}")
        return ", ".join(parts)


def hyperd_env(d: Path, assets: Path) -> dict[str, str]:
    """hyperd's and hyperctl's environment: none of the caller's HYPERCONTAINER_* settings, ours instead."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HYPERCONTAINER_")}
    return dict(environ, HYPERCONTAINER_ROOT=str(d / "state"), HYPERCONTAINER_RUN=str(d / "run"),
                HYPERCONTAINER_SOCKET=str(d / "run/hyperd.sock"), HYPERCONTAINER_ASSETS=str(assets))


# ---- cleanup ---------------------------------------------------------------------------------------------------
def stop_critest(d: Path) -> None:
    """A critest still running against the runtime in `d` (its run was killed): stopped before the cleanup."""
    for pid in procs_mentioning(d):
        if Path(cmdline(pid).split(" ")[0]).name == "critest":
            stop_pid(pid, 10)


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
    stop_critest(d)
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


def hyperd_leftovers(d: Path, net: Network) -> list[str]:
    """What a hyperd that has removed its sandboxes and stopped should not have left: VMM (or other) processes
    naming its directories, network namespaces in its netns directory, CNI result cache entries, IPAM
    allocations, links on our bridge, portmap rules naming our network, mounts under its state and run dirs."""
    found = []
    procs = [pid for pid in procs_mentioning(d) if Path(cmdline(pid).split(" ")[0]).name != "critest"]
    if procs:
        found.append(f"{len(procs)} process(es): " + "; ".join(cmdline(p)[:80] for p in procs[:3]))
    netns = [m for m in mounts_under(d / "netns") if Path(m).parent == d / "netns"]
    if netns:
        found.append(f"{len(netns)} network namespace(s): {', '.join(Path(m).name for m in netns[:3])}")
    cache = sorted((d / "cni/results").glob("*")) if (d / "cni/results").is_dir() else []
    if cache:
        found.append(f"{len(cache)} CNI result cache entr{'y' if len(cache) == 1 else 'ies'}: "
                     f"{', '.join(c.name for c in cache[:3])}")
    ips = []
    for f in (d / "ipam").glob("*/*"):
        with contextlib.suppress(ValueError):
            ips.append(str(ipaddress.ip_address(f.name)))
    if ips:
        found.append(f"{len(ips)} IPAM allocation(s): {', '.join(sorted(ips)[:5])}")
    brif = Path(f"/sys/class/net/{net.bridge}/brif")
    links = sorted(p.name for p in brif.iterdir()) if brif.is_dir() else []
    if links:
        found.append(f"{len(links)} link(s) on {net.bridge}: {', '.join(links[:5])}")
    r = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True)
    rules = [x for x in r.stdout.splitlines() if x.startswith("-A ") and f'name: \\"{net.name}\\"' in x]
    if rules:
        found.append(f"{len(rules)} portmap NAT rule(s) naming {net.name}")
    mounts = [m for sub in ("state", "run") for m in mounts_under(d / sub)]
    if mounts:
        found.append(f"{len(mounts)} mount(s) under {d}/{{state,run}}: {', '.join(mounts[:2])}")
    return found


def hyperd_cleanup(d: Path, net: Network, crictl: Path | None, hyperd: Path, assets: Path,
                   shm_before: set[int] | None = None) -> list[str]:
    """Removes all that a hyperd run in `d` made, whether it ended well or was killed: its sandboxes (through the
    CRI while hyperd answers: hyperd's own CNI DEL and namespace removal), any pod left (hyperctl rm -f), hyperd
    itself (SIGTERM: with --no-live-restore it stops its VMs), then whatever is still there: processes naming `d`,
    mounts (overlays, network namespaces), our bridge and NAT rules, uid leases and cgroups of VMMs that are gone,
    critest's SysV segments, then `d`. Returns what hyperd left behind after its own cleanup (a finding)."""
    if not d.exists() and not Path(f"/sys/class/net/{net.bridge}").exists():
        return []
    started = float((d / "started").read_text()) if (d / "started").exists() else time.time()
    environ = hyperd_env(d, assets)
    stop_critest(d)
    api = str(d / "run/hyperd.sock")
    ours = [pid for pid in procs_mentioning(d) if f"--socket {api} " in cmdline(pid)]
    checked = False
    if ours:
        sock = d / "run/cri.sock"
        if crictl and sock.exists():
            with contextlib.suppress(subprocess.TimeoutExpired):
                crictl_run(crictl, f"unix://{sock}", "rmp", "--all", "--force", timeout=900)
        hyperctl = str(hyperd.parent / "hyperctl")
        with contextlib.suppress(subprocess.TimeoutExpired):
            ids = subprocess.run([hyperctl, "ps", "-aq"], env=environ, capture_output=True, text=True,
                                 timeout=60).stdout.split()
            if ids:
                subprocess.run([hyperctl, "rm", "-f", *ids], env=environ, capture_output=True, timeout=600)
        for pid in ours:
            stop_pid(pid, 180)  # --no-live-restore: hyperd stops what is left of its pods and their VMs
        checked = True
    left = hyperd_leftovers(d, net) if checked else []
    for pid in procs_mentioning(d):  # VMMs, file servers, a critest of a killed run
        stop_pid(pid, 10)
    unmount_all(d)  # overlays, pods' shares, network namespaces (bind mounts in d/netns)
    for ns in netns_in_subnet(net):
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
    if Path(f"/sys/class/net/{net.bridge}").exists():
        subprocess.run(["ip", "link", "delete", net.bridge], capture_output=True)
    drop_portmap_rules(net)
    with contextlib.suppress(subprocess.TimeoutExpired):  # leases and cgroups of the VMMs stopped above
        subprocess.run([str(hyperd.parent / "python"), "-c", "from hypercontainer.vm import confine; confine.sweep()"],
                       capture_output=True, timeout=60)
    n = drop_test_shm(started, shm_before)
    if n:
        log(f"removed {n} SysV shared memory segment(s) critest left")
    still = mounts_under(d)
    if still:
        log(f"warning: still mounted, so {d} is kept: {still[:3]}")
    else:
        shutil.rmtree(d, ignore_errors=True)
    return left
