"""hypercontainer's Python client: hyperd's API (its unix socket, or a remote hyperd over TLS) as a small library,
shaped like docker-py. hyperctl is built on it.

    import hypercontainer.client as hc

    client = hc.from_env()                    # the hyperd hyperctl would talk to
    pod = client.pods.run("busybox", ["sleep", "60"], name="demo", labels={"app": "demo"})
    print(pod.exec("uname -m").output)         # ExecResult(exit_code, output)
    for chunk in pod.logs(stream=True, follow=True):
        ...
    pod.remove(force=True)

`Client(socket=...)` or `Client(host="tcp://HOST:PORT", tls_ca=..., token=...)` picks a hyperd. Errors are the
exceptions of `hypercontainer.errors` (NotFound, Conflict, InvalidArgument, Unavailable, ...; all `HCError`).

Importing this package is cheap (the standard library's http.client; websockets only for exec and run), as hyperctl's
start-up time counts.
"""

from ..errors import CommandNotRunnable, Conflict, HCError, InvalidArgument, NotFound, Unavailable
from .api import Client, from_env
from .endpoint import Endpoint
from .images import Image, ImageCollection
from .pods import ExecResult, LogRecord, Pod, PodCollection
from .specs import PodOptions

__all__ = ["Client", "CommandNotRunnable", "Conflict", "Endpoint", "ExecResult", "HCError", "Image",
           "ImageCollection", "InvalidArgument", "LogRecord", "NotFound", "Pod", "PodCollection", "PodOptions",
           "Unavailable", "from_env"]
