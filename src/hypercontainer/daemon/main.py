"""hyperd: prepares guest assets, finds the accelerator, recovers state, serves the API on a unix socket and,
with --listen, on TCP over TLS.

Both listeners serve the same app, in one event loop. The contract with the API's auth layer: a request (HTTP or
websocket) that came over TCP has `scope["hc.remote"] = True`, set by the TCP server's wrapper
(daemon/listen.py) before the app sees it; one that came over the unix socket never has the key. The TCP
listener speaks TLS only (daemon/tls.py: `hyperd tls init DIR` makes its certificates) and is hardened against
slow and oversized requests (daemon/listen.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import uvicorn

from .. import __version__, faults
from ..errors import HCError
from ..guest import assets as guest_assets
from ..image.pull import Puller
from ..image.store import ImageStore
from ..network.manager import Network
from ..pod.manager import PodManager
from ..pod.pod import GuestAssets
from ..pod.pool import Pool
from ..pod.templates import Templates
from ..storage import mountns
from ..storage.named_volumes import NamedVolumes
from ..vm import confine, uids
from ..vm.accel import Accel, detect
from . import kernel_switch, listen, tls
from .api import DaemonInfo, create_app
from .config import HyperdConfig, command
from .state import StateDB

log = logging.getLogger("hyperd")
SOCKET_MODE = 0o660


def bind_socket(path: Path) -> socket.socket:
    """Binds the API socket with mode 0660; refuses to take over the socket of a running daemon."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            raise HCError(f"hyperd is already running on {path}")
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, SOCKET_MODE)
    sock.listen(128)
    return sock


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT once it has stopped serving, which would end hyperd before it hands its
    pods over, and one server's handlers would replace another's: here serve_all() takes the signals for all."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_all(servers: list[tuple[uvicorn.Server, list[socket.socket]]]) -> None:
    """Runs each server on its sockets until SIGTERM/SIGINT, or until one of them stops: then all stop."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server, _ in servers:
            server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    tasks = [asyncio.ensure_future(server.serve(sockets=socks)) for server, socks in servers]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        stop()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    for r in results:
        if isinstance(r, BaseException):
            raise r


@dataclass
class Parts:
    """hyperd's components, made from its config (nothing started yet)."""

    images: ImageStore
    db: StateDB
    network: Network
    templates: Templates
    pool: Pool
    manager: PodManager
    puller: Puller


def assemble(cfg: HyperdConfig, a: guest_assets.Assets, accel: Accel) -> Parts:
    """Makes the components `cfg` describes for the guest `a` under `accel`; starts nothing."""
    p = cfg.paths
    images = ImageStore(p.images)
    db = StateDB(p.db)
    network = Network(cfg.network, p.db, cfg.bridge, str(cfg.subnet))
    templates = Templates(a.kernel, a.initrd, accel.name, a.digest, p.assets / "templates", p.run / "templates")
    # an auto-sized pool only where the policy takes from it (a pod's own `--boot pool` can use a pool of given size)
    pool = Pool(0 if cfg.pool is None and cfg.boot != "pool" else cfg.pool, templates, p.run / "pool", network)
    manager = PodManager(images, db, p.pods, p.run / "pods", GuestAssets(a.kernel, a.initrd, accel.name), network,
                         templates, cfg.boot, pool, cfg.storage_size)
    manager.live_restore = cfg.live_restore
    manager.volumes = NamedVolumes(p.root / "volumes", p.db)
    return Parts(images, db, network, templates, pool, manager,
                 Puller(images, set(cfg.insecure_registries), cfg.pull_parallel, cfg.registry_hosts))


async def serve(cfg: HyperdConfig) -> None:
    """Runs hyperd as `cfg` says until SIGTERM/SIGINT."""
    p = cfg.paths
    tls_ctx = tls.server_context(cfg.tls_dir) if cfg.listen else None  # checked by the config; read here
    tcp = [s for host, port in cfg.listen for s in listen.bind(host, port)]  # a port in use stops hyperd here
    if cfg.cri_socket:  # before anything starts: a build without `make cri-api` says so and stops here
        # hyperd forks (QEMU, virtiofsd, helpers) with gRPC's threads running: its children exec or touch no gRPC,
        # so gRPC's fork handlers (and their "skipping fork() handlers" line per fork) are not wanted
        os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
        from ..cri.network import CniNetwork
        from ..cri.server import CriServer
    p.ensure()
    faults.arm(cfg.crash_at)
    uids.use_range(cfg.vmm_uids)  # every VMM uid this process claims comes from the configured range
    log.info("VMM uids: %d-%d", *cfg.vmm_uids)
    log.info("preparing guest assets in %s", p.assets)
    a = await asyncio.to_thread(guest_assets.ensure, p.assets, cfg.kernel)
    accel = await detect(a.kernel, a.initrd, a.digest, p.assets / "accel.json", cfg.forced_accel)
    log.info("accelerator: %s (%s)", accel.name, accel.reason)
    parts = assemble(cfg, a, accel)
    images, db, network, templates, pool, manager = (parts.images, parts.db, parts.network, parts.templates,
                                                     parts.pool, parts.manager)
    await network.setup()
    log.info("network: %s (%s)", network.mode, network.reason)
    templates.prune()
    default_template(cfg, parts)
    await manager.recover()  # also removes pool VMs a crashed hyperd left (with or without a pool now)
    leases, groups = confine.sweep()  # uid leases and cgroups of VMs that are gone
    if leases or groups:
        log.info("released %d uid leases and %d cgroups of VMs that are gone", leases, groups)
    pool.fill()
    info = DaemonInfo(accel.name, accel.reason, str(a.kernel), a.kernel_release, str(a.initrd), a.agent_hash,
                      str(p.root), cri_socket=str(cfg.cri_socket) if cfg.cri_socket else None)
    build = None
    if kernel_switch.needed(p.assets, cfg.kernel):
        build = info.kernel_build = kernel_switch.KernelBuild(p.assets, lambda: switch(cfg, parts, info))
        build.start()
    app = create_app(manager, images, parts.puller, info, audit_log=cfg.audit_log)
    sock = bind_socket(p.socket)
    servers: list[tuple[uvicorn.Server, list[socket.socket]]] = [
        (_Server(uvicorn.Config(app, log_level="warning", lifespan="off", ws_ping_interval=None)), [sock])]
    if tls_ctx:
        servers.append((_Server(listen.config(app, tls_ctx)), tcp))
    cri = None
    if cfg.cri_socket:
        cni_step = CniNetwork(cfg.cni_conf_dir, cfg.cni_bin_dirs, cfg.cni_cache_dir, cfg.cni_netns_dir, cfg.cni_network)
        log.info("CRI sandboxes' network: %s", cni_step.describe())
        cri = CriServer(cfg.cri_socket, manager, images, parts.puller, cni_step, streaming_address=cfg.cri_streaming)
    if cri:
        await cri.start()
    log.info("hyperd %s listening on %s", __version__, p.socket)
    for host, port in cfg.listen:
        log.info("and on tcp://%s:%d (TLS, %s)", f"[{host}]" if ":" in host else host, port, cfg.tls_dir)
    try:
        await serve_all(servers)
    finally:
        if build:
            await build.stop()
        if cri:
            await cri.stop()
        action = "leaving running" if manager.live_restore else "shutting down"
        log.info("stopping: %s %d pods", action, len(manager.pods))
        await manager.shutdown()
        await network.close(remove_rules=not manager.live_restore)
        db.close()
        if not manager.live_restore or not manager.pods:  # no VM runs on in its mount namespace: it ends here
            mountns.release_daemon(p.run / "ns")
        with contextlib.suppress(FileNotFoundError):
            p.socket.unlink()


def default_template(cfg: HyperdConfig, parts: Parts) -> None:
    """The default pod's template (the pool's too), built in the background; pods boot cold until it is ready."""
    if cfg.boot != "cold":
        parts.templates.ready(parts.pool.cpus, parts.pool.memory, parts.network.mode != "none")


async def switch(cfg: HyperdConfig, parts: Parts, info: DaemonInfo) -> None:
    """Our kernel is built (daemon/kernel_switch.py): new pods, templates and pool VMs boot it from now on."""
    p = cfg.paths
    a = await asyncio.to_thread(guest_assets.ensure, p.assets, cfg.kernel)
    if str(a.kernel) == info.kernel and str(a.initrd) == info.initrd:
        return
    accel = await detect(a.kernel, a.initrd, a.digest, p.assets / "accel.json", cfg.forced_accel)
    old = info.kernel_release
    await parts.templates.switch(a.kernel, a.initrd, accel.name, a.digest)
    parts.manager.assets = GuestAssets(a.kernel, a.initrd, accel.name)
    info.accel, info.accel_reason, info.kernel, info.kernel_release, info.initrd, info.agent = (
        accel.name, accel.reason, str(a.kernel), a.kernel_release, str(a.initrd), a.agent_hash)
    default_template(cfg, parts)
    await parts.pool.renew()
    log.info("guest kernel: switched from %s to ours, %s, for new pods, templates and the pool", old, a.kernel_release)
    parts.manager.events.record_daemon("kernel-switch", {"kernel": a.kernel_release, "previous": old,
                                                         "image": str(a.kernel)})


def run(cfg: HyperdConfig) -> None:
    """hyperd with its checked configuration: logging, the root check, then serve() until it is stopped."""
    logging.basicConfig(level=logging.DEBUG if cfg.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.geteuid() != 0:
        click.echo("hyperd: must run as root (it mounts overlays and starts VMs)", err=True)
        sys.exit(1)
    try:
        # a mount namespace of its own: the pods' shares are no mount points on the host (storage/mountns.py)
        joined = mountns.enter_daemon(cfg.paths.run / "ns")
    except OSError as e:
        click.echo(f"hyperd: a mount namespace of its own: {e.strerror}", err=True)
        sys.exit(1)
    if joined:
        log.info("joined the mount namespace of the previous hyperd (pinned at %s)", cfg.paths.run / "ns")
    try:
        asyncio.run(serve(cfg))
    except HCError as e:
        click.echo(f"hyperd: {e.message}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


main = command(run)  # the `hyperd` entry point: flags (or their HYPERCONTAINER_* defaults) -> HyperdConfig -> run


if __name__ == "__main__":
    main()
