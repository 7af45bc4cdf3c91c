"""Pods: `client.pods` (a `PodCollection`) makes, finds and lists them; a `Pod` is one of them."""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import EllipsisType
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, NamedTuple, Unpack, overload

from . import filters as _filters

if TYPE_CHECKING:
    from .specs import PodOptions
    from .transport import Transport

BOOT_TIMEOUT = 600.0  # starting a pod boots a VM: slow under TCG, or when its image layers are unpacked first


def _container(name: str | None) -> dict[str, str]:
    return {"container": name} if name else {}


class ExecResult(NamedTuple):
    """What a command run to its end gave (`Pod.exec`, `pods.run(detach=False)`)."""

    exit_code: int
    """Its exit status (128+N: killed by signal N)."""
    output: bytes
    """Its stdout and stderr, as they interleaved."""


class LogRecord(NamedTuple):
    """One chunk of a container's output, as hyperd logged it."""

    stream: str
    """"stdout" or "stderr"."""
    time: str
    """When it was written (RFC 3339)."""
    data: bytes
    """The bytes written."""


def _longer(client: Transport, seconds: float) -> float | None:
    """A call's timeout: at least `seconds`, none if the client has none."""
    return None if client.timeout is None else max(client.timeout, seconds)


class Pod:
    """One pod (its VM and containers). `attrs` is hyperd's record of it (`hyperctl inspect`), read on first use
    and again by `reload()`; the other properties come from it."""

    def __init__(self, client: Transport, ref: str, attrs: dict | None = None, *, id: str | None = None) -> None:
        self.client = client
        self._id = attrs["id"] if attrs else id
        self._ref = self._id or ref
        self._attrs = attrs

    def __repr__(self) -> str:
        return f"<Pod {self._ref[:12]}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pod) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def attrs(self) -> dict:
        """The pod's record: id, name, state, image, spec, containers, network, exit code, times..."""
        if self._attrs is None:
            self.reload()
        assert self._attrs is not None
        return self._attrs

    @property
    def id(self) -> str:
        """The full id."""
        return self._id or str(self.attrs["id"])

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def name(self) -> str:
        return str(self.attrs["name"])

    @property
    def status(self) -> str:
        """hyperd's state as last read (`reload()`; an action reads it again on next use): created, starting,
        running, paused, stopping, exited, failed."""
        return str(self.attrs["state"])

    @property
    def exit_code(self) -> int | None:
        """The (first) container's exit code, once it exited."""
        code = self.attrs.get("exit_code")
        return None if code is None else int(code)

    @property
    def labels(self) -> dict[str, str]:
        return dict(_filters.labels_of(self.attrs))

    def reload(self) -> Pod:
        """Reads the pod's record again; returns the pod."""
        self._attrs = self.client.request("GET", f"/v1/pods/{self._ref}")
        self._id = self._ref = self._attrs["id"]
        return self

    def _post(self, action: str, timeout: float | EllipsisType | None = ..., **kw: Any) -> Any:
        return self.client.request("POST", f"/v1/pods/{self._ref}/{action}", timeout=timeout, **kw)

    def start(self) -> None:
        """Boots a created or stopped pod (a stopped one again from its spec: same id, name, volumes, ports)."""
        self._post("start", _longer(self.client, BOOT_TIMEOUT))
        self._attrs = None

    def stop(self, timeout: float = 10.0) -> None:
        """The stop signal (the image's StopSignal, else SIGTERM), then SIGKILL after `timeout` seconds."""
        self._post("stop", _longer(self.client, timeout + 60), params={"timeout": timeout})
        self._attrs = None

    def restart(self, timeout: float = 10.0) -> None:
        """stop(timeout), then start()."""
        self._post("restart", _longer(self.client, timeout + BOOT_TIMEOUT), params={"timeout": timeout})
        self._attrs = None

    def kill(self, signal: int | str = "KILL", container: str | None = None) -> None:
        """Sends a signal (a number, or a name: "TERM", "SIGHUP") to the (first, or named) container."""
        from ..signals import parse_signal

        num = signal if isinstance(signal, int) else parse_signal(signal)
        self._post("kill", json={"signal": num, "container": container})

    def pause(self) -> None:
        """Stops the VM's CPUs."""
        self._post("pause")

    def unpause(self) -> None:
        """Resumes a paused pod."""
        self._post("unpause")

    def wait(self) -> int:
        """Blocks until the (first) container exits; returns its exit code."""
        return int(self.client.request("POST", f"/v1/pods/{self._ref}/wait", timeout=None)["exit_code"])

    def rename(self, name: str) -> None:
        """Gives the pod another name."""
        self._post("rename", json={"name": name})
        self._attrs = None

    def remove(self, force: bool = False) -> str:
        """Removes the pod (`force`: a running one too, stopped first); returns its id."""
        return str(self.client.request("DELETE", f"/v1/pods/{self._ref}", params={"force": force})["id"])

    def remove_container(self, name: str, force: bool = False) -> str:
        """Removes one container of a running pod (`force`: a running one too); returns its name."""
        return str(self.client.request("DELETE", f"/v1/pods/{self._ref}/containers/{name}",
                                       params={"force": force})["name"])

    def top(self, ps_args: str = "", *, container: str | None = None) -> dict:
        """The container's processes as the guest sees them: {"titles": [...], "processes": [[...], ...]} (docker
        top's columns; with `ps_args`, the container's own ps runs with them)."""
        return dict(self.client.request("GET", f"/v1/pods/{self._ref}/top",
                                        params={"ps_args": ps_args, **_container(container)}))

    def stat_path(self, path: str, *, container: str | None = None) -> dict:
        """{"mode", "size", "dir"} of an absolute path in the container (symlinks followed there); NotFound if
        it is not there."""
        return dict(self.client.request("GET", f"/v1/pods/{self._ref}/archive/stat",
                                        params={"path": path, **_container(container)}))

    @contextlib.contextmanager
    def get_archive(self, path: str, *, container: str | None = None) -> Iterator[BinaryIO]:
        """A tar stream of `path` in the container, read as a file while the `with` lasts (docker cp's naming:
        entries under the path's last name; a path ending in /. gives the directory's contents)."""
        with self.client.rest.stream("GET", f"/v1/pods/{self._ref}/archive",
                                     {"path": path, **_container(container)}) as r:
            yield r

    def put_archive(self, path: str, data: bytes | Iterable[bytes], *, owners: bool = False,
                    container: str | None = None) -> None:
        """Unpacks the tar `data` under the directory `path` in the container; `owners`: keep the archive's
        uid/gid (else root's). Entries that are absolute, hold '..' or would be written through a symlink are
        refused (InvalidArgument)."""
        self.client.request("PUT", f"/v1/pods/{self._ref}/archive", content=data, timeout=None,
                            params={"path": path, "owners": "true" if owners else "false", **_container(container)},
                            headers={"content-type": "application/x-tar"})

    def exec(self, cmd: str | Sequence[str], *, container: str | None = None, user: str | None = None,
             env: Mapping[str, str] | Sequence[str] | None = None, workdir: str | None = None,
             stdin: bytes | None = None) -> ExecResult:
        """Runs a command in a running container (the first, or `container`) to its end, without a terminal:
        `stdin` is its input (none: it reads an empty one). A string `cmd` is split as a shell would.
        Raises CommandNotRunnable (exit_code 126 or 127) when it cannot be run."""
        from .specs import _argv, env_list
        from .stdio import collect, exec_request

        first = exec_request(_argv(cmd), container=container, stdin=stdin is not None, user=user,
                             env=env_list(env or ()), workdir=workdir)
        with self.client.websocket(f"/v1/pods/{self._ref}/exec") as ws:
            code, output, _ = collect(ws, first, stdin)
        return ExecResult(code, output)

    def exec_detached(self, cmd: str | Sequence[str], *, container: str | None = None, user: str | None = None,
                      env: Mapping[str, str] | Sequence[str] | None = None, workdir: str | None = None) -> str:
        """Starts a command in a running container and leaves it running (`hyperctl exec -d`); returns its exec
        id. Its exit code shows under `attrs["execs"]` once it exited."""
        from .specs import _argv, env_list
        from .stdio import exec_request

        first = exec_request(_argv(cmd), container=container, user=user, env=env_list(env or ()), workdir=workdir)
        body = {k: first[k] for k in ("command", "container", "user", "env", "workdir")}
        return str(self._post("execs", json=body)["id"])

    def log_records(self, *, follow: bool = False, tail: int | None = None, since: float | None = None,
                    container: str | None = None) -> Iterator[LogRecord]:
        """The container's output chunk by chunk, with its stream and time. `follow`: on while it runs; `tail`:
        only the last N chunks; `since`: only those since that time (seconds since the epoch)."""
        path = f"/v1/pods/{self._ref}/logs"
        for rec in self.client.stream_json(path, follow=follow, tail=tail, since=since, container=container):
            yield LogRecord(rec["stream"], rec["time"], rec["log"].encode("utf-8", "surrogateescape"))

    @overload
    def logs(self, *, stream: Literal[False] = False, follow: bool = False, tail: int | None = None,
             since: float | None = None, container: str | None = None, timestamps: bool = False) -> bytes: ...

    @overload
    def logs(self, *, stream: Literal[True], follow: bool = False, tail: int | None = None,
             since: float | None = None, container: str | None = None,
             timestamps: bool = False) -> Iterator[bytes]: ...

    def logs(self, *, stream: bool = False, follow: bool = False, tail: int | None = None,
             since: float | None = None, container: str | None = None,
             timestamps: bool = False) -> bytes | Iterator[bytes]:
        """The container's output (stdout and stderr): all of it as bytes, or with `stream` an iterator of chunks
        as they come (with `follow`, until the container exits). `timestamps`: each chunk after its time."""
        chunks = (r.time.encode() + b" " + r.data if timestamps else r.data
                  for r in self.log_records(follow=follow, tail=tail, since=since, container=container))
        return chunks if stream else b"".join(chunks)


class PodCollection:
    """`client.pods`: runs, creates, finds and lists pods."""

    def __init__(self, client: Transport) -> None:
        self.client = client

    def get(self, ref: str) -> Pod:
        """The pod of this id, id prefix or name; NotFound if there is none."""
        return Pod(self.client, ref).reload()

    def handle(self, ref: str) -> Pod:
        """A `Pod` for `ref` without asking hyperd now: an unknown one fails (NotFound) on first use."""
        return Pod(self.client, ref)

    def list(self, all: bool = False, filters: Mapping[str, str | Sequence[str]] | None = None) -> builtins.list[Pod]:
        """Running pods (`all`: every one), those that pass `filters` ({KEY: VALUE or [VALUES]}, as docker ps's:
        name (a substring), label (KEY or KEY=VALUE), status (created, running, paused, exited), id (a prefix),
        ancestor (an image)). A status filter looks at every pod."""
        wanted = _filters.normalize(filters)
        shown = all or "status" in wanted
        return [Pod(self.client, p["id"], p) for p in self.client.request("GET", "/v1/pods")
                if (shown or p["state"] in _filters.RUNNING) and _filters.matches(p, wanted)]

    def create(self, image: str | None = None, command: str | Sequence[str] | None = None, *,
               spec: dict | None = None, start: bool = False, **options: Unpack[PodOptions]) -> Pod:
        """A new pod of `image` (running `command`, else the image's), created but not started (`Pod.start`
        boots it); with `start`, started too. `spec`: a whole pod spec (spec/pod.py's fields, or a Kubernetes v1 Pod
        manifest) instead of image, command and options."""
        if spec is None:
            if image is None:
                raise TypeError("create() needs an image or a spec")
            from .specs import pod_spec

            spec = pod_spec(image, command, options)
        elif image is not None or command is not None or options:
            raise TypeError("create() takes either a spec or an image, command and options")
        created = self.client.request("POST", "/v1/pods", json={"spec": spec, "start": start},
                                      timeout=_longer(self.client, BOOT_TIMEOUT) if start else ...)
        return Pod(self.client, created["id"], id=created["id"])

    @overload
    def run(self, image: str | None = None, command: str | Sequence[str] | None = None, *,
            detach: Literal[True] = True, spec: dict | None = None, **options: Unpack[PodOptions]) -> Pod: ...

    @overload
    def run(self, image: str | None = None, command: str | Sequence[str] | None = None, *,
            detach: Literal[False], spec: dict | None = None, **options: Unpack[PodOptions]) -> ExecResult: ...

    def run(self, image: str | None = None, command: str | Sequence[str] | None = None, *, detach: bool = True,
            spec: dict | None = None, **options: Unpack[PodOptions]) -> Pod | ExecResult:
        """Runs `command` (else the image's) in a new pod. `detach` (the default): returns the started `Pod`.
        Otherwise waits for the container to exit and returns its `ExecResult` (docker-py would raise on a
        non-zero exit; here the code is yours to check). Options as `create`'s."""
        if detach:
            return self.create(image, command, spec=spec, start=True, **options)
        if spec is None:
            if image is None:
                raise TypeError("run() needs an image or a spec")
            from .specs import pod_spec

            spec = pod_spec(image, command, options)
        from .stdio import collect

        with self.client.websocket("/v1/pods/run") as ws:
            code, output, _ = collect(ws, {"spec": spec})
        return ExecResult(code, output)
