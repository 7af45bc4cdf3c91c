"""The CRI server: grpc.aio on a unix socket (mode 0660, like the API socket), in hyperd's event loop, started
after the pods were recovered and stopped before they are handed over; the streaming server beside it (started
before it, stopped after it), and the sandboxes' network step (CNI in hyperd: network.py)."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import grpc

from ..errors import HCError
from ..image.pull import Puller
from ..image.store import ImageStore
from ..network.manager import Network
from ..pod.manager import PodManager
from .api import rpc
from .images import ImageService
from .network import NetworkStep, NoNetwork, Readiness
from .runtime import RuntimeService, Streaming
from .streaming import PodBackend, StreamingServer

log = logging.getLogger(__name__)
SOCKET_MODE = 0o660
MAX_MESSAGE = 16 << 20  # the kubelet's limit both ways
STOP_GRACE = 2.0  # seconds calls in flight get when hyperd stops


def hyperd_network_readiness(network: Network | None) -> Readiness:
    """NetworkReady without a network step (sandboxes with loopback only): whether hyperd's networking works."""
    if network is None or network.mode == "none":
        return Readiness(False, "NetworkNotConfigured", "hyperd runs with --network none")
    return Readiness(True)


class CriServer:
    """The CRI's gRPC server and its streaming server (exec, attach, port-forward: cri/streaming/), which starts
    first (the URLs Exec, Attach and PortForward answer with point at it) and stops last."""

    def __init__(self, path: Path, manager: PodManager, images: ImageStore, puller: Puller,
                 network: NetworkStep | None = None, streaming: Streaming | None = None,
                 streaming_address: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.path = path
        step = network or NoNetwork(lambda: hyperd_network_readiness(manager.network))
        self.runtime = RuntimeService(manager, images, step, streaming)
        self.images = ImageService(images, puller, manager)
        self.streaming: StreamingServer | None = None
        if streaming is None:  # ours, on the pod core
            host, port = streaming_address
            self.streaming = StreamingServer(PodBackend(self.runtime.target, self.runtime.stdin_once,
                                                        self.runtime.dial), host, port)
            self.runtime.streaming = self.streaming
        self._server: grpc.aio.Server | None = None

    def _free_socket(self) -> None:
        """Removes a stale socket; refuses to take over one a live server answers on."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists() and not self.path.is_symlink():
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.path))
            raise HCError(f"a CRI server is already listening on {self.path}")
        except (ConnectionRefusedError, FileNotFoundError):
            self.path.unlink(missing_ok=True)
        finally:
            probe.close()

    async def start(self) -> None:
        self._free_socket()
        await self.runtime.reconcile_network()  # before anything is served: what no live sandbox holds goes
        if self.streaming is not None:
            try:
                await self.streaming.start()
            except OSError as e:
                raise HCError(f"cannot listen on the CRI streaming address {self.streaming.address}:"
                              f"{self.streaming.port} (--cri-streaming-address): {e.strerror or e}") from None
        try:
            await self._serve()
        except BaseException:
            if self.streaming is not None:
                await self.streaming.stop()
            raise
        self.runtime.arm()
        log.info("CRI v1 (RuntimeService, ImageService) listening on unix://%s", self.path)

    async def _serve(self) -> None:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                          ("grpc.max_send_message_length", MAX_MESSAGE)])
        rpc.add_RuntimeServiceServicer_to_server(self.runtime, server)
        rpc.add_ImageServiceServicer_to_server(self.images, server)
        old = os.umask(0o117)
        try:
            if server.add_insecure_port(f"unix://{self.path}") == 0:
                raise HCError(f"cannot listen on the CRI socket {self.path}")
            await server.start()
        finally:
            os.umask(old)
        os.chmod(self.path, SOCKET_MODE)
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            self.runtime.close()
            await self._server.stop(STOP_GRACE)
            self._server = None
            self.path.unlink(missing_ok=True)
        if self.streaming is not None:
            await self.streaming.stop()
