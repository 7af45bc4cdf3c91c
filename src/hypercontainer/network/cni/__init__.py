"""CNI for Kubernetes pods (the CRI server's RunPodSandbox/StopPodSandbox), with the standard plugins as they are
installed (Debian's containernetworking-plugins in /usr/lib/cni, or /opt/cni/bin). No maintained Python CNI library
exists (PyPI has none), so this is the runtime side of the spec (containernetworking/cni SPEC.md), written here:

    config.py   network configurations: load(dir) (the first valid file, lexical order), parse(), the default
                conflist (bridge hc-cni0 on 10.66.0.0/16 + portmap + firewall + bandwidth + loopback) and
                install_default(dir)
    netns.py    Netns: named network namespaces made the way CNI runtimes make them (a thread unshares, its
                /proc/thread-self/ns/net bind-mounted onto BASE/NAME, loopback up), removed by umount + unlink
    runtime.py  add / delete / check (plugin chains, prevResult, runtimeConfig, CNI_ARGS, the result cache that a
                DEL after a restart reads, DEL after a failed ADD), version / status / gc
    result.py   the parsed result: interfaces, IPs, routes, DNS

The sandbox's whole network life is setup_sandbox() (namespace, ADD; on failure nothing is left, the namespace
included) and teardown_sandbox() (DEL, then the namespace); the VM then joins the namespace through netns_mode.

Everything here blocks (plugins are processes): call it from a worker thread (asyncio.to_thread). Plugins run in the
network namespace of the calling thread, which is the host's for hyperd; tests run them from a thread inside a
namespace of their own (nsenter.run_in), so the bridges and iptables rules they make stay there."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import (
    DEFAULT_CONF_DIR,
    SUPPORTED_VERSIONS,
    ConfigError,
    NetworkConfig,
    config_files,
    default,
    default_text,
    has_network,
    install_default,
    load,
    load_file,
    parse,
)
from .netns import DEFAULT_NETNS_DIR, Netns, is_netns
from .result import DNS, Interface, IPConfig, Result, ResultError, Route
from .runtime import (
    DEFAULT_CACHE_DIR,
    DEFAULT_PLUGIN_DIRS,
    DEFAULT_TIMEOUT,
    Bandwidth,
    Cached,
    CNIError,
    PluginVersion,
    PodRef,
    PortMapping,
    add,
    attachments,
    cached,
    capability_args,
    check,
    cni_args,
    delete,
    find_plugin,
    gc,
    status,
    version,
)

__all__ = ["DEFAULT_CACHE_DIR", "DEFAULT_CONF_DIR", "DEFAULT_NETNS_DIR", "DEFAULT_PLUGIN_DIRS", "DEFAULT_TIMEOUT",
           "DNS", "SUPPORTED_VERSIONS", "Bandwidth", "CNIError", "Cached", "ConfigError", "IPConfig", "Interface",
           "Netns", "NetworkConfig", "PluginVersion", "PodRef", "PortMapping", "Result", "ResultError", "Route",
           "Sandbox", "add", "attachments", "cached", "capability_args", "check", "cni_args", "config_files",
           "default", "default_text", "delete", "find_plugin", "gc", "has_network", "install_default", "is_netns",
           "load", "load_file", "parse", "ready", "setup_sandbox", "status", "teardown_sandbox", "version"]


@dataclass(frozen=True)
class Sandbox:
    """A pod sandbox's network: its namespace (what the VM joins) and the ADD's result."""

    netns: Netns
    result: Result
    ifname: str = "eth0"

    @property
    def ips(self) -> list[str]:
        return self.result.pod_ips(self.ifname)


def ready(conf_dir: str | Path = DEFAULT_CONF_DIR, plugin_dirs: Sequence[str | Path] = DEFAULT_PLUGIN_DIRS,
          name: str | None = None) -> tuple[bool, str]:
    """The CRI's NetworkReady: (True, "") when `conf_dir` has a valid network whose plugins are all there and answer
    (status()); else (False, why)."""
    try:
        status(load(conf_dir, name), plugin_dirs)
    except (ConfigError, CNIError) as e:
        return False, e.message
    return True, ""


def setup_sandbox(sandbox_id: str, config: NetworkConfig, *, pod: PodRef | None = None,
                  capability_args: Mapping[str, Any] | None = None, ifname: str = "eth0",
                  netns_dir: str | Path = DEFAULT_NETNS_DIR, netns_name: str | None = None,
                  args: Mapping[str, str] | None = None, plugin_dirs: Sequence[str | Path] = DEFAULT_PLUGIN_DIRS,
                  cache_dir: str | Path = DEFAULT_CACHE_DIR, timeout: float = DEFAULT_TIMEOUT) -> Sandbox:
    """RunPodSandbox's network: a namespace `netns_dir/netns_name` (default: `cni-` and the sandbox id's first 32
    characters), then ADD. If the ADD fails, it was undone (runtime.add) and the namespace is removed too."""
    ns = Netns.create(netns_name or f"cni-{sandbox_id[:32]}", netns_dir)
    try:
        result = add(ns.path, sandbox_id, ifname, config, capability_args, pod=pod, args=args,
                     plugin_dirs=plugin_dirs, cache_dir=cache_dir, timeout=timeout)
    except BaseException:
        ns.remove()
        raise
    return Sandbox(ns, result, ifname)


def teardown_sandbox(sandbox_id: str, netns_path: str | Path | None, config: NetworkConfig | None = None, *,
                     ifname: str = "eth0", plugin_dirs: Sequence[str | Path] = DEFAULT_PLUGIN_DIRS,
                     cache_dir: str | Path = DEFAULT_CACHE_DIR, timeout: float = DEFAULT_TIMEOUT) -> None:
    """StopPodSandbox/RemovePodSandbox's network: DEL (from the cache; idempotent), then the namespace goes. The
    namespace stays when the DEL fails, so a retry sees what the plugins need."""
    delete(netns_path, sandbox_id, ifname, config, plugin_dirs=plugin_dirs, cache_dir=cache_dir, timeout=timeout)
    if netns_path:
        with contextlib.suppress(FileNotFoundError):
            Netns(Path(netns_path)).remove()
