"""hyperd's configuration: its flags, each defaulting to its HYPERCONTAINER_* variable, parsed and checked once
into a frozen HyperdConfig that main() passes down (nothing below reads the environment for these)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

import click
from click.core import ParameterSource

from .. import __version__, faults
from ..config import (
    DEFAULT_ROOT,
    DEFAULT_RUN,
    ENV_ACCEL,
    ENV_ASSETS,
    ENV_KERNEL,
    ENV_ROOT,
    ENV_RUN,
    ENV_SOCKET,
    ENV_VMM_UIDS,
    Paths,
)
from ..errors import HCError, InvalidArgument
from ..image import mirrors
from ..network.manager import DEFAULT_BRIDGE, DEFAULT_SUBNET
from ..storage.disk import DEFAULT_STORAGE_SIZE, parse_size
from ..vm import uids
from . import tls
from .audit import AUDIT_LOG as DEFAULT_AUDIT_LOG

NetworkMode = Literal["auto", "bridge", "user", "none"]
BootPolicy = Literal["cold", "template", "pool"]
AccelChoice = Literal["auto", "kvm", "tcg"]
KernelChoice = Literal["auto", "own", "distro"]

MAX_POOL = 64
MAX_PULL_PARALLEL = 64
DEFAULT_PULL_PARALLEL = 4
SOCKET_PATH_MAX = 107  # sun_path, less its terminating NUL
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # IFNAMSIZ - 1 bytes, nothing ip(8) would misread
_DEFAULT_SUBNET = ipaddress.IPv4Network(DEFAULT_SUBNET)
_DEFAULT_STORAGE_SIZE = parse_size(DEFAULT_STORAGE_SIZE)
_NETWORK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")  # libcni's rule for network names
DEFAULT_STREAMING_HOST = "127.0.0.1"
DEFAULT_CNI_CONF_DIR = Path("/etc/cni/net.d")
DEFAULT_CNI_BIN_DIRS = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))
DEFAULT_CNI_NETNS_DIR = Path("/run/netns")
DEFAULT_CNI_NETWORK = "hypercontainer"  # the default conflist's name (network/cni/10-hypercontainer.conflist)
_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")

# Each flag's environment variable (its default when set and not empty).
ENVVARS: dict[str, str] = {
    "root": ENV_ROOT, "run": ENV_RUN, "socket": ENV_SOCKET, "assets": ENV_ASSETS,
    "insecure_registry": "HYPERCONTAINER_INSECURE_REGISTRIES", "live_restore": "HYPERCONTAINER_LIVE_RESTORE",
    "network": "HYPERCONTAINER_NETWORK", "bridge": "HYPERCONTAINER_BRIDGE", "subnet": "HYPERCONTAINER_SUBNET",
    "boot": "HYPERCONTAINER_BOOT", "pool": "HYPERCONTAINER_POOL", "vmm_uids": ENV_VMM_UIDS,
    "storage_size": "HYPERCONTAINER_STORAGE_SIZE", "accel": ENV_ACCEL, "kernel": ENV_KERNEL,
    "pull_parallel": "HYPERCONTAINER_PULL_PARALLEL", "debug": "HYPERCONTAINER_DEBUG",
    "crash_at": "HYPERCONTAINER_CRASH_AT",
    "registry_config": "HYPERCONTAINER_REGISTRY_CONFIG",
    "cri_socket": "HYPERCONTAINER_CRI_SOCKET", "cri": "HYPERCONTAINER_CRI",
    "cri_streaming_address": "HYPERCONTAINER_CRI_STREAMING_ADDRESS",
    "cni_conf_dir": "HYPERCONTAINER_CNI_CONF_DIR", "cni_bin_dir": "HYPERCONTAINER_CNI_BIN_DIR",
    "cni_cache_dir": "HYPERCONTAINER_CNI_CACHE_DIR", "cni_netns_dir": "HYPERCONTAINER_CNI_NETNS_DIR",
    "cni_network": "HYPERCONTAINER_CNI_NETWORK",
    "listen": "HYPERCONTAINER_LISTEN", "tls_dir": "HYPERCONTAINER_TLS_DIR", "audit_log": "HYPERCONTAINER_AUDIT_LOG",
}


def flag(name: str) -> str:
    """The command-line flag of a HyperdConfig setting: `vmm_uids` -> `--vmm-uids`."""
    return "--" + name.replace("_", "-")


class ConfigError(InvalidArgument):
    """A flag's value (given or from its environment variable) that hyperd cannot use."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{flag(name)}: {reason}")
        self.name, self.reason = name, reason


@dataclass(frozen=True)
class HyperdConfig:
    """Everything hyperd was told, checked: built once by build() and handed to the parts that need it."""

    paths: Paths = field(default_factory=Paths.of)
    live_restore: bool = True  # pods outlive hyperd; the next one takes them over
    network: NetworkMode = "auto"
    bridge: str = DEFAULT_BRIDGE
    subnet: ipaddress.IPv4Network = _DEFAULT_SUBNET
    boot: BootPolicy = "pool"  # a pool VM when one is ready, else a template clone, else a cold boot
    pool: int | None = None  # VMs kept started and paused; None: sized by hyperd (pod/pool.py, auto_size)
    vmm_uids: uids.UidRange = uids.DEFAULT_RANGE
    storage_size: int = _DEFAULT_STORAGE_SIZE  # bytes per pod's disk; 0: no limit
    insecure_registries: frozenset[str] = frozenset()
    registry_hosts: mirrors.RegistryHosts = field(default_factory=mirrors.RegistryHosts)  # --registry-config, read
    accel: AccelChoice = "auto"  # auto: the probe decides
    kernel: KernelChoice = "auto"
    pull_parallel: int = DEFAULT_PULL_PARALLEL  # layers downloaded at once per pull
    debug: bool = False
    crash_at: str | None = None  # tests only: hyperd kills itself at this step of a pod start (faults.py)
    cri: bool = True  # serve the Kubernetes CRI (gRPC)
    cri_socket_path: Path | None = None  # --cri-socket; None: <run>/cri.sock
    cri_streaming: tuple[str, int] = (DEFAULT_STREAMING_HOST, 0)  # the streaming server's address; port 0: any
    cni_conf_dir: Path = DEFAULT_CNI_CONF_DIR
    cni_bin_dirs: tuple[Path, ...] = DEFAULT_CNI_BIN_DIRS
    cni_cache_dir_path: Path | None = None  # --cni-cache-dir; None: <root>/cni
    cni_netns_dir: Path = DEFAULT_CNI_NETNS_DIR
    cni_network: str | None = DEFAULT_CNI_NETWORK  # None: the first valid configuration of the conf dir
    listen: tuple[tuple[str, int], ...] = ()  # TCP addresses the API is served on too (TLS only)
    tls_dir_path: Path | None = None  # --tls-dir; None: <root>/tls
    audit_log: Path | None = DEFAULT_AUDIT_LOG  # None: no audit log (--audit-log '')

    @property
    def cri_socket(self) -> Path | None:
        """The CRI's socket; None without a CRI server (--no-cri)."""
        if not self.cri:
            return None
        return self.cri_socket_path or self.paths.run / "cri.sock"

    @property
    def cni_cache_dir(self) -> Path:
        """The CNI result cache (what a DEL after a restart reads)."""
        return self.cni_cache_dir_path or self.paths.root / "cni"

    @property
    def tls_dir(self) -> Path:
        """The TCP listener's TLS set (daemon/tls.py)."""
        return self.tls_dir_path or self.paths.root / "tls"

    @property
    def forced_accel(self) -> str | None:
        """The accelerator to use without a probe, if one was named."""
        return None if self.accel == "auto" else self.accel


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(name, f"{value!r} is not one of {', '.join(allowed)}")
    return value


def _crash_at(spec: str) -> str:
    try:
        faults.parse(spec)
    except ValueError as e:
        raise ConfigError("crash_at", str(e)) from None
    return spec


def _count(name: str, value: int | str, low: int, high: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(name, f"{value!r} is not a whole number") from None
    if not low <= n <= high:
        raise ConfigError(name, f"{n} is not within {low}..{high}")
    return n


def _subnet(value: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(value)
    except ValueError as e:
        raise ConfigError("subnet", f"{value!r} is not an IPv4 network in CIDR form ({e})") from None
    if net.prefixlen > 29:
        raise ConfigError("subnet", f"{value} is too small for pods (at most /29)")
    return net


def _uid_range(value: str) -> uids.UidRange:
    try:
        return uids.check_range(uids.parse_range(value))
    except HCError as e:
        raise ConfigError("vmm_uids", e.message) from None


def _socket(value: Path, name: str = "socket") -> Path:
    if len(str(value).encode()) > SOCKET_PATH_MAX:
        raise ConfigError(name, f"{value} is longer than the {SOCKET_PATH_MAX} bytes a unix socket path may have")
    return value


def _cri_socket(cri: bool, given: Path | None, run: Path) -> Path | None:
    """--cri-socket as given (None: the default under --run, which must fit in a socket path too)."""
    if not cri:
        return None
    _socket(Path(given) if given else run / "cri.sock", "cri_socket")
    return Path(given) if given else None


def _host_port(value: str) -> tuple[str, int]:
    """--cri-streaming-address: HOST, HOST:PORT, [IPv6] or [IPv6]:PORT (a bare IPv6 address has no port)."""
    text = value.strip()
    host, port, bracketed = text, "0", text.startswith("[")
    if bracketed:
        end = text.find("]")
        if end < 0 or (text[end + 1:] and not text[end + 1:].startswith(":")):
            raise ConfigError("cri_streaming_address", f"{value!r} is not [IPv6] or [IPv6]:PORT")
        host, port = text[1:end], text[end + 2:] or "0"
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host:
        raise ConfigError("cri_streaming_address", f"{value!r} has no host (HOST[:PORT]; 0.0.0.0 for every address)")
    if ":" in host or bracketed:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError("cri_streaming_address", f"{host!r} is not an IPv6 address") from None
    elif not re.fullmatch(r"[A-Za-z0-9.-]+", host):
        raise ConfigError("cri_streaming_address", f"{host!r} is not a host name or address")
    if not port.isdigit() or int(port) > 65535:
        raise ConfigError("cri_streaming_address", f"port {port!r} is not a number within 0..65535 (0: any free one)")
    return host, int(port)


def _dirs(value: str | Iterable[Path | str], name: str) -> tuple[Path, ...]:
    """A colon-separated list of directories (the CNI_PATH convention)."""
    parts = value.split(":") if isinstance(value, str) else [str(v) for v in value]
    out = tuple(Path(p) for p in parts if p)
    if not out:
        raise ConfigError(name, "no directory given")
    for p in out:
        if not p.is_absolute():
            raise ConfigError(name, f"{p} is not an absolute path")
    return out


def _cni_network(value: str | None) -> str | None:
    if not value:
        return None
    if not _NETWORK_NAME.match(value):
        raise ConfigError("cni_network", f"{value!r} is not a CNI network name (letters, digits, '_', '.', '-')")
    return value


def _listen(values: Iterable[str]) -> tuple[tuple[str, int], ...]:
    """--listen: tcp://HOST:PORT or tcp://[IPv6]:PORT, each once."""
    out: list[tuple[str, int]] = []
    for v in (v.strip() for v in values):
        if not v:
            continue
        scheme, sep, rest = v.partition("://")
        host, colon, port = rest.rpartition(":")
        if scheme != "tcp" or not sep or not colon or not host:
            raise ConfigError("listen", f"{v!r} is not tcp://HOST:PORT ([IPv6] in brackets; 0.0.0.0 for every "
                                        "IPv4 address)")
        if host.startswith("[") and host.endswith("]"):
            try:
                host = str(ipaddress.IPv6Address(host[1:-1]))
            except ValueError:
                raise ConfigError("listen", f"{host!r} is not an IPv6 address") from None
        elif not re.fullmatch(r"[A-Za-z0-9.-]+", host):
            raise ConfigError("listen", f"{host!r} is not a host name or address")
        if not port.isdigit() or not 0 < int(port) <= 65535:
            raise ConfigError("listen", f"port {port!r} is not a number within 1..65535")
        if (host, int(port)) not in out:
            out.append((host, int(port)))
    return tuple(out)


def _tls_dir(listen: tuple[tuple[str, int], ...], given: Path | None, root: Path) -> Path | None:
    """--tls-dir as given; with --listen, its set must be usable (the listener serves nothing without it)."""
    if listen:
        try:
            tls.server_context(Path(given) if given else root / "tls")
        except tls.TLSError as e:
            raise ConfigError("tls_dir", e.message) from None
    return Path(given) if given else None


def _registries(values: Iterable[str]) -> frozenset[str]:
    out = set()
    for v in (v.strip() for v in values):
        if not v:
            continue
        if not _REGISTRY.match(v):
            raise ConfigError("insecure_registry", f"{v!r} is not HOST[:PORT] (no scheme, no path)")
        out.add(v)
    return frozenset(out)


def _registry_hosts(path: Path) -> mirrors.RegistryHosts:
    try:
        return mirrors.load(path)
    except mirrors.RegistryConfigError as e:
        raise ConfigError("registry_config", e.message) from None


def build(*, root: Path = DEFAULT_ROOT, run: Path = DEFAULT_RUN, socket: Path | None = None,
          assets: Path | None = None, insecure_registry: Iterable[str] = (), live_restore: bool = True,
          network: str = "auto", bridge: str = DEFAULT_BRIDGE, subnet: str = DEFAULT_SUBNET,
          boot: str = "pool", pool: int | str = "auto", vmm_uids: str = uids.DEFAULT_TEXT,
          storage_size: str = DEFAULT_STORAGE_SIZE, accel: str = "auto", kernel: str = "auto",
          pull_parallel: int | str = DEFAULT_PULL_PARALLEL, debug: bool = False,
          crash_at: str | None = None, registry_config: Path = mirrors.DEFAULT_DIR, cri_socket: Path | None = None,
          cri: bool = True, cri_streaming_address: str = DEFAULT_STREAMING_HOST,
          cni_conf_dir: Path = DEFAULT_CNI_CONF_DIR, cni_bin_dir: str | Iterable[Path | str] = DEFAULT_CNI_BIN_DIRS,
          cni_cache_dir: Path | None = None, cni_netns_dir: Path = DEFAULT_CNI_NETNS_DIR,
          cni_network: str | None = DEFAULT_CNI_NETWORK, listen: Iterable[str] = (),
          tls_dir: Path | None = None, audit_log: Path | str | None = DEFAULT_AUDIT_LOG) -> HyperdConfig:
    """Checks every setting and makes the config; a bad one raises ConfigError naming its flag."""
    if not _IFNAME.match(bridge):
        raise ConfigError("bridge", f"{bridge!r} is not an interface name (1-15 of A-Z a-z 0-9 _ . -)")
    try:
        size = parse_size(storage_size)
    except ValueError as e:
        raise ConfigError("storage_size", str(e)) from None
    return HyperdConfig(
        paths=Paths.of(Path(root), Path(run), Path(assets) if assets else None,
                       _socket(Path(socket)) if socket else _socket(Path(run) / "hyperd.sock")),
        live_restore=live_restore,
        network=cast(NetworkMode, _choice("network", network, get_args(NetworkMode))),
        bridge=bridge,
        subnet=_subnet(subnet),
        boot=cast(BootPolicy, _choice("boot", boot, get_args(BootPolicy))),
        pool=None if str(pool).strip() == "auto" else _count("pool", pool, 0, MAX_POOL),
        vmm_uids=_uid_range(vmm_uids),
        storage_size=size,
        insecure_registries=_registries(insecure_registry),
        registry_hosts=_registry_hosts(Path(registry_config)),
        accel=cast(AccelChoice, _choice("accel", accel, get_args(AccelChoice))),
        kernel=cast(KernelChoice, _choice("kernel", kernel, get_args(KernelChoice))),
        pull_parallel=_count("pull_parallel", pull_parallel, 1, MAX_PULL_PARALLEL),
        debug=debug,
        crash_at=_crash_at(crash_at) if crash_at else None,
        cri=cri,
        cri_socket_path=_cri_socket(cri, cri_socket, Path(run)),
        cri_streaming=_host_port(cri_streaming_address),
        cni_conf_dir=Path(cni_conf_dir),
        cni_bin_dirs=_dirs(cni_bin_dir, "cni_bin_dir"),
        cni_cache_dir_path=Path(cni_cache_dir) if cni_cache_dir else None,
        cni_netns_dir=Path(cni_netns_dir),
        cni_network=_cni_network(cni_network),
        listen=(addresses := _listen(listen)),
        tls_dir_path=_tls_dir(addresses, tls_dir, Path(root)),
        audit_log=Path(audit_log) if audit_log and str(audit_log) else None,
    )


class _PoolSize(click.ParamType[str]):
    """--pool: `auto` or a count 0..MAX_POOL."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if text != "auto":
            try:
                n = int(text)
            except ValueError:
                self.fail(f"{text!r} is neither a whole number nor auto", param, ctx)
            if not 0 <= n <= MAX_POOL:
                self.fail(f"{n} is not in the range 0<=x<={MAX_POOL}", param, ctx)
        return text


class _Repeated(click.ParamType[str]):
    """A repeatable flag: repeated on the command line, comma-separated in its environment variable."""

    envvar_list_splitter = ","

    def __init__(self, name: str) -> None:
        self.name = name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return str(value).strip()


def _option(*decls: str, name: str, help: str, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(*decls, name, envvar=ENVVARS[name], show_envvar=True, help=help, **kw)


def options(f: Callable[..., Any]) -> Callable[..., Any]:
    """hyperd's flags, in --help order; parameter names are build()'s keywords."""
    path = click.Path(path_type=Path)
    decorators = [
        _option("--root", name="root", type=path, metavar="DIR", default=DEFAULT_ROOT, show_default=True,
                help="State directory: images, pods, the database."),
        _option("--run", name="run", type=path, metavar="DIR", default=DEFAULT_RUN, show_default=True,
                help="Runtime directory: sockets, per-pod runtime files."),
        _option("--socket", name="socket", type=path, show_default="<run>/hyperd.sock", help="The API socket."),
        _option("--assets", name="assets", type=path, metavar="DIR", show_default="<root>/assets",
                help="Guest assets: kernel, initramfs, agent builds, VM templates."),
        _option("--insecure-registry", name="insecure_registry", type=_Repeated("HOST:PORT"), multiple=True,
                help="Registry reached over plain HTTP (loopback ones always are); repeatable, comma-separated in "
                     "the variable."),
        _option("--registry-config", name="registry_config", type=path, metavar="DIR", default=mirrors.DEFAULT_DIR,
                show_default=True, help="Registry mirrors: DIR/<registry host>/hosts.toml as containerd's certs.d "
                                        "(a containerd config_path works as is); read once at start, none if absent."),
        _option("--live-restore/--no-live-restore", name="live_restore", default=True, show_default=True,
                help="Leave pods running when hyperd stops and take them over when it starts."),
        _option("--network", name="network", type=click.Choice(get_args(NetworkMode)), default="auto",
                show_default=True, help="Pod network: a host bridge with NAT, QEMU user mode, or none (auto: bridge "
                                        "where links can be created, else user)."),
        _option("--bridge", name="bridge", metavar="NAME", default=DEFAULT_BRIDGE, show_default=True,
                help="Bridge name."),
        _option("--subnet", name="subnet", metavar="CIDR", default=DEFAULT_SUBNET, show_default=True,
                help="Bridge subnet."),
        _option("--boot", name="boot", type=click.Choice(get_args(BootPolicy)), default="pool",
                show_default=True,
                help="How pods start: a cold boot, from a VM template, or a pre-started VM from the pool (a "
                     "template clone when none is ready, a cold boot until the template is built)."),
        _option("--pool", name="pool", type=_PoolSize(), metavar="N|auto", default="auto", show_default=True,
                help="VMs kept started (from the template) and paused, ready for pods of the default size and "
                     "network; auto: sized from free memory and how fast pods take them; 0: no pool."),
        _option("--vmm-uids", name="vmm_uids", metavar="FIRST-LAST", default=uids.DEFAULT_TEXT, show_default=True,
                help="FIRST-LAST: the uids (and gids) QEMU runs as, one per VM; no user or group may have one."),
        _option("--storage-size", name="storage_size", metavar="SIZE", default=DEFAULT_STORAGE_SIZE, show_default=True,
                help="Each pod's disk for its containers' writable layers (a sparse image of its own: a pod that "
                     "fills it fills its own), e.g. 20G; 0: no limit."),
        _option("--accel", name="accel", type=click.Choice(get_args(AccelChoice)), default="auto",
                show_default=True, help="Accelerator (auto: KVM if a probe boot under it works, else TCG)."),
        _option("--kernel", name="kernel", type=click.Choice(get_args(KernelChoice)), default="auto",
                show_default=True,
                help="Guest kernel: ours (built by make assets), the distribution's, or auto (ours if built)."),
        _option("--pull-parallel", name="pull_parallel", type=click.IntRange(1, MAX_PULL_PARALLEL), metavar="N",
                default=DEFAULT_PULL_PARALLEL, show_default=True, help="Layers downloaded at once per pull."),
        _option("--debug", name="debug", is_flag=True, default=False, help="Verbose logs."),
        _option("--cri-socket", name="cri_socket", type=path, show_default="<run>/cri.sock",
                help="The Kubernetes CRI (v1, gRPC) socket: a kubelet's --container-runtime-endpoint, crictl's "
                     "--runtime-endpoint (unix://PATH)."),
        _option("--cri/--no-cri", name="cri", default=True, show_default=True,
                help="Serve the Kubernetes CRI on --cri-socket."),
        _option("--cri-streaming-address", name="cri_streaming_address", metavar="HOST[:PORT]",
                default=DEFAULT_STREAMING_HOST, show_default=True,
                help="Where the CRI streaming server (exec, attach, port-forward) listens; port 0 or none: any free "
                     "one. The kubelet (or crictl) connects to it: keep it on loopback unless they run elsewhere."),
        _option("--cni-conf-dir", name="cni_conf_dir", type=path, metavar="DIR", default=DEFAULT_CNI_CONF_DIR,
                show_default=True, help="CNI network configurations for CRI pod sandboxes (make cni installs the "
                                        "default `hypercontainer` network there)."),
        _option("--cni-bin-dir", name="cni_bin_dir", metavar="DIR[:DIR...]",
                default=":".join(str(d) for d in DEFAULT_CNI_BIN_DIRS), show_default=True,
                help="Where the CNI plugins are, searched in order."),
        _option("--cni-cache-dir", name="cni_cache_dir", type=path, metavar="DIR", show_default="<root>/cni",
                help="CNI results of the sandboxes' attachments (what a DEL after a restart runs with)."),
        _option("--cni-netns-dir", name="cni_netns_dir", type=path, metavar="DIR", default=DEFAULT_CNI_NETNS_DIR,
                show_default=True, help="Where sandboxes' network namespaces are mounted (hc-cri-<id>)."),
        _option("--cni-network", name="cni_network", metavar="NAME", default=DEFAULT_CNI_NETWORK, show_default=True,
                help="The CNI network (a configuration's `name`) sandboxes join; '': the first valid configuration "
                     "of --cni-conf-dir in lexical order (libcni's rule)."),
        _option("--listen", name="listen", type=_Repeated("tcp://HOST:PORT"), multiple=True,
                help="Serve the API on this TCP address too, over TLS only (--tls-dir); repeatable, comma-separated "
                     "in the variable. Requests that come this way are marked remote."),
        _option("--tls-dir", name="tls_dir", type=path, metavar="DIR", show_default="<root>/tls",
                help="The --listen TLS set: server.pem and server-key.pem (and ca.pem for clients), as `hyperd tls "
                     "init DIR` makes them."),
        _option("--audit-log", name="audit_log", type=path, metavar="FILE", default=DEFAULT_AUDIT_LOG,
                show_default=True, help="Where every mutating call and every refused remote call is recorded (a "
                                        "JSON line each, rotated); '': none."),
        _option("--crash-at", name="crash_at", metavar="POINT[:VICTIM]", hidden=True,
                help="Tests only: die (SIGKILL) at this step of the next pod start (VICTIM qemu or virtiofsd: kill "
                     "that process of the pod instead)."),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


def from_flags(ctx: click.Context, flags: dict[str, Any]) -> HyperdConfig:
    """build() over click's parsed flags; a ConfigError becomes click's usage error for that flag, saying when
    the value came from the environment variable."""
    try:
        return build(**flags)
    except ConfigError as e:
        hint = f"'{flag(e.name)}'"
        if ctx.get_parameter_source(e.name) == ParameterSource.ENVIRONMENT:
            hint += f" (env var: '{ENVVARS[e.name]}')"
        raise click.BadParameter(e.reason, ctx=ctx, param_hint=hint) from None


def command(run: Callable[[HyperdConfig], None]) -> click.Group:
    """The hyperd command: parses and checks the flags into a HyperdConfig, then calls run(cfg); or, given one,
    a subcommand (`hyperd tls init DIR`), which takes none of the flags."""

    @click.group(name="hyperd", invoke_without_command=True, subcommand_metavar="[tls init DIR]",
                 context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
    @options
    @click.version_option(__version__, prog_name="hyperd")
    @click.pass_context
    def hyperd(ctx: click.Context, /, **flags: Any) -> None:
        """hyperd: the hypercontainer daemon. Every pod runs in its own VM."""
        if ctx.invoked_subcommand is None:
            run(from_flags(ctx, flags))

    hyperd.add_command(tls.tls_command)
    return hyperd
