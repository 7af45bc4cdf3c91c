"""The CRI streaming server: exec, attach and port-forward for the kubelet, crictl and critest.

The CRI's Exec, Attach and PortForward RPCs return a one-time URL from StreamingServer.url_for_*; the client
upgrades a request to it, to SPDY/3.1 (client-go's default) or to a WebSocket, and the server runs the session on
a Backend (the CRI layer's, on the pod manager). What the kubelet's cri/streaming serves, on one listener:

    SPDY/3.1     exec/attach: v4.channel.k8s.io (v3, v2, channel.k8s.io); port-forward: portforward.k8s.io
    WebSocket    exec/attach: v5.channel.k8s.io, v4.channel.k8s.io, v4.base64.channel.k8s.io, (base64.)channel.k8s.io
                 port-forward: v4.channel.k8s.io, v4.base64.channel.k8s.io (ports from the request or ?port=)
                 SPDY/3.1+<any SPDY protocol above>: SPDY tunnelled in binary messages (client-go's port-forward
                 over WebSockets: crictl --transport websocket, critest -websocket-portforward)

    spdy.py          SPDY/3.1 frames and header compression (the standard library's zlib)
    session.py       one SPDY connection, server side
    websocket.py     WebSocket connections (the websockets library, Sans-I/O), channel protocol, SPDY tunnel
    remotecommand.py exec and attach on open streams: stdio, tty resize, the exit status, hang-ups
    portforward.py   port-forward on SPDY stream pairs or WebSocket channels
    status.py        the status written on the error stream
    server.py        the listener, its HTTP front and the one-time URLs
    backend.py       Backend and Process: what the runtime provides
    pods.py          a Backend on the pod core (ProcessStreams for exec, a container subscription for attach)

Wiring (hyperd's CRI): one StreamingServer(PodBackend(runtime.target, stdin_once, dial), address, port), started
and stopped with the CRI server; it is RuntimeService's `streaming` (its async url(kind, request) is the
Streaming protocol runtime.py declares).
"""

from .backend import Backend, PortReader, PortWriter, Process
from .pods import PodBackend
from .remotecommand import Timing
from .server import StreamingServer

__all__ = ["Backend", "PodBackend", "PortReader", "PortWriter", "Process", "StreamingServer", "Timing"]
