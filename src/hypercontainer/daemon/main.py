"""hyperd: prepares guest assets, finds the accelerator, recovers state, serves the API on a unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import click
import uvicorn

from .. import __version__
from ..config import Paths, paths
from ..errors import HCError
from ..guest import assets as guest_assets
from ..image.pull import Puller
from ..image.store import ImageStore
from ..network.manager import DEFAULT_BRIDGE, DEFAULT_SUBNET, Network
from ..pod.manager import PodManager
from ..pod.pod import GuestAssets
from ..pod.pool import Pool
from ..pod.templates import Templates
from ..storage.disk import DEFAULT_STORAGE_SIZE, parse_size
from ..vm import confine, uids
from ..vm.accel import detect
from .api import DaemonInfo, create_app
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
    pods over; here a signal only asks the server to stop, and serve() returns normally."""

    @contextlib.contextmanager
    def capture_signals(self):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _stop(self) -> None:
        self.should_exit = True


async def serve(p: Paths) -> None:
    p.ensure()
    vmm_uids = uids.check_range(uids.uid_range())
    log.info("VMM uids: %d-%d", *vmm_uids)
    log.info("preparing guest assets in %s", p.assets)
    a = await asyncio.to_thread(guest_assets.ensure, p.assets)
    accel = await detect(a.kernel, a.initrd, a.digest, p.assets / "accel.json")
    log.info("accelerator: %s (%s)", accel.name, accel.reason)
    images = ImageStore(p.images)
    db = StateDB(p.db)
    network = Network(os.environ.get("HYPERCONTAINER_NETWORK", "auto"), p.db,
                      os.environ.get("HYPERCONTAINER_BRIDGE", DEFAULT_BRIDGE),
                      os.environ.get("HYPERCONTAINER_SUBNET", DEFAULT_SUBNET))
    await network.setup()
    log.info("network: %s (%s)", network.mode, network.reason)
    boot = os.environ.get("HYPERCONTAINER_BOOT", "template")
    if boot not in ("cold", "template", "pool"):
        raise HCError(f"unknown boot policy {boot!r} (cold, template or pool)")
    try:
        pool_size = int(os.environ.get("HYPERCONTAINER_POOL", "0"))
    except ValueError:
        raise HCError("HYPERCONTAINER_POOL must be a number of VMs") from None
    templates = Templates(a.kernel, a.initrd, accel.name, a.digest, p.assets / "templates", p.run / "templates")
    templates.prune()
    if boot != "cold":
        templates.ready(1, 256, network.mode != "none")  # the default pod, built in the background (cold until then)
    try:
        storage_size = parse_size(os.environ.get("HYPERCONTAINER_STORAGE_SIZE", DEFAULT_STORAGE_SIZE))
    except ValueError as e:
        raise HCError(str(e)) from None
    pool = Pool(pool_size, templates, p.run / "pool", network)
    manager = PodManager(images, db, p.pods, p.run / "pods", GuestAssets(a.kernel, a.initrd, accel.name), network,
                         templates, boot, pool, storage_size)
    manager.live_restore = os.environ.get("HYPERCONTAINER_LIVE_RESTORE", "1") != "0"
    await manager.recover()  # also removes pool VMs a crashed hyperd left (with or without a pool now)
    leases, groups = confine.sweep()  # uid leases and cgroups of VMs that are gone
    if leases or groups:
        log.info("released %d uid leases and %d cgroups of VMs that are gone", leases, groups)
    pool.fill()
    info = DaemonInfo(accel.name, accel.reason, str(a.kernel), a.kernel_release, str(a.initrd), a.agent_hash,
                      str(p.root))
    insecure = {r for r in os.environ.get("HYPERCONTAINER_INSECURE_REGISTRIES", "").split(",") if r}
    app = create_app(manager, images, Puller(images, insecure), info)
    sock = bind_socket(p.socket)
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws_ping_interval=None)
    server = _Server(config)
    log.info("hyperd %s listening on %s", __version__, p.socket)
    try:
        await server.serve(sockets=[sock])
    finally:
        action = "leaving running" if manager.live_restore else "shutting down"
        log.info("stopping: %s %d pods", action, len(manager.pods))
        await manager.shutdown()
        await network.close(remove_rules=not manager.live_restore)
        db.close()
        with contextlib.suppress(FileNotFoundError):
            p.socket.unlink()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(path_type=Path), help="State directory [/var/lib/hypercontainer].")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), help="Runtime directory [/run/hypercontainer].")
@click.option("--socket", "sock", type=click.Path(path_type=Path), help="API socket [<run>/hyperd.sock].")
@click.option("--insecure-registry", multiple=True, help="Registry reached over plain HTTP (loopback ones always are).")
@click.option("--live-restore/--no-live-restore", default=None,
              help="Leave pods running when hyperd stops and take them over when it starts [on].")
@click.option("--network", type=click.Choice(["auto", "bridge", "user", "none"]), default=None,
              help="Pod network: a host bridge with NAT, QEMU user mode, or none [auto: bridge where links can be "
                   "created, else user].")
@click.option("--bridge", help=f"Bridge name [{DEFAULT_BRIDGE}].")
@click.option("--subnet", help=f"Bridge subnet [{DEFAULT_SUBNET}].")
@click.option("--boot", type=click.Choice(["cold", "template", "pool"]), default=None,
              help="How pods start: a cold boot, from a VM template, or a pre-started VM from the pool [template].")
@click.option("--pool", "pool_size", type=click.IntRange(0, 64), default=None,
              help="VMs kept started (from the template) and paused, ready for pods [0].")
@click.option("--vmm-uids", help="FIRST-LAST: the uids (and gids) QEMU runs as, one per VM; no user or group may "
              f"have one [{uids.DEFAULT_RANGE[0]}-{uids.DEFAULT_RANGE[1]}].")
@click.option("--storage-size", help="Each pod's disk for its containers' writable layers (a sparse image of its own: "
              f"a pod that fills it fills its own), e.g. 20G; 0: no limit [{DEFAULT_STORAGE_SIZE}].")
@click.option("--debug", is_flag=True, help="Verbose logs.")
@click.version_option(__version__, prog_name="hyperd")
def main(root: Path | None, run_dir: Path | None, sock: Path | None, insecure_registry: tuple[str, ...],
         live_restore: bool | None, network: str | None, bridge: str | None, subnet: str | None,
         boot: str | None, pool_size: int | None, vmm_uids: str | None, storage_size: str | None,
         debug: bool) -> None:
    """hyperd: the hypercontainer daemon. Every pod runs in its own VM."""
    if root:
        os.environ["HYPERCONTAINER_ROOT"] = str(root)
    if run_dir:
        os.environ["HYPERCONTAINER_RUN"] = str(run_dir)
    if sock:
        os.environ["HYPERCONTAINER_SOCKET"] = str(sock)
    if live_restore is not None:
        os.environ["HYPERCONTAINER_LIVE_RESTORE"] = "1" if live_restore else "0"
    if pool_size is not None:
        os.environ["HYPERCONTAINER_POOL"] = str(pool_size)
    for name, value in (("NETWORK", network), ("BRIDGE", bridge), ("SUBNET", subnet), ("BOOT", boot),
                        ("VMM_UIDS", vmm_uids), ("STORAGE_SIZE", storage_size)):
        if value:
            os.environ[f"HYPERCONTAINER_{name}"] = value
    if insecure_registry:
        os.environ["HYPERCONTAINER_INSECURE_REGISTRIES"] = ",".join(insecure_registry)
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.geteuid() != 0:
        click.echo("hyperd: must run as root (it mounts overlays and starts VMs)", err=True)
        sys.exit(1)
    try:
        asyncio.run(serve(paths()))
    except HCError as e:
        click.echo(f"hyperd: {e.message}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
