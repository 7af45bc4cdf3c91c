"""The remote API's transport: `hyperd tls init`, `hyperd --listen tcp://...` (TLS only), hyperctl's --host,
--tls-ca, token and contexts, and the listener's defences (plain HTTP, untrusted CAs, slow and oversized
requests). A real hyperd on 127.0.0.1 with real TLS; hyperctl runs with a unix socket that does not exist, so
whatever works went over TCP. The `vm` tests run pods remotely (run, exec, logs -f, attach)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner

from hypercontainer.cli import context as ctx
from hypercontainer.cli.rest import Rest
from hypercontainer.daemon import listen
from hypercontainer.daemon.config import ENVVARS, ConfigError, HyperdConfig, build, command
from hypercontainer.daemon.tls import server_context
from hypercontainer.errors import HCError

from .conftest import BIN, Daemon
from .registry import free_port

CA_NAME = "ca.pem"


def tls_init(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "hyperd"), "tls", "init", str(directory), *args], capture_output=True,
                          text=True, timeout=60)


class Remote:
    """hyperd with --listen, and hyperctl pointed at it from a client's environment (no local socket)."""

    def __init__(self, root: Path, tls: Path) -> None:
        self.port = free_port()
        self.tls = tls
        self.ca = tls / CA_NAME
        self.daemon = Daemon(root, HYPERCONTAINER_LISTEN=f"tcp://127.0.0.1:{self.port}",
                             HYPERCONTAINER_TLS_DIR=str(tls), HYPERCONTAINER_BOOT="cold")
        self.host = f"tcp://127.0.0.1:{self.port}"
        self.token: str | None = None
        self.config = root / "client-config"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERCONTAINER_")}
        env.update(HYPERCONTAINER_SOCKET=str(self.config / "no-such.sock"), XDG_CONFIG_HOME=str(self.config))
        if self.token:
            env["HYPERCONTAINER_TOKEN"] = self.token
        return {**env, **extra}

    def hyperctl(self, *args: str, remote: bool = True, input: bytes | None = None, timeout: float = 180,
                 **env: str) -> subprocess.CompletedProcess[bytes]:
        """hyperctl [--host ... --tls-ca ...] ARGS (`remote=False`: no flags, the environment decides)."""
        flags = ["--host", self.host, "--tls-ca", str(self.ca)] if remote else []
        return subprocess.run([str(BIN / "hyperctl"), *flags, *args], env=self.env(**env), input=input,
                              capture_output=True, timeout=timeout)

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen([str(BIN / "hyperctl"), "--host", self.host, "--tls-ca", str(self.ca), *args],
                                env=self.env(), **kw)


def issue_token(d: Daemon, tenant: str) -> str | None:
    """A token for a new tenant, made as the administrator on the unix socket; None where hyperd has no tenants
    (the transport is then all there is to test)."""
    admin = Rest(d.rundir / "hyperd.sock", 30)
    try:
        admin.request("POST", "/v1/tenants", json={"name": tenant})
    except HCError as e:  # a hyperd without tenants: no such route
        if e.message.startswith(("hyperd answered 404", "hyperd answered 405")):
            return None
        raise
    return str(admin.request("POST", "/v1/tokens", json={"tenant": tenant})["token"])


@pytest.fixture(scope="module")
def remote() -> Iterator[Remote]:
    if os.geteuid() != 0:
        pytest.skip("hyperd needs root")
    root = Path(tempfile.mkdtemp(prefix="hc-remote-"))
    r = tls_init(root / "tls", "--san", "remote.test")
    assert r.returncode == 0, r.stderr
    rem = Remote(root, root / "tls")
    rem.daemon.start()
    try:
        rem.token = issue_token(rem.daemon, "remote")
        yield rem
    finally:
        rem.daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def out(r: subprocess.CompletedProcess[bytes]) -> str:
    return r.stdout.decode()


def err(r: subprocess.CompletedProcess[bytes]) -> str:
    return r.stderr.decode()


# ---- hyperd tls init ------------------------------------------------------------------------------------------


def test_tls_init_makes_a_ca_and_a_server_certificate_it_signed(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    d = tmp_path / "tls"
    r = tls_init(d, "--san", "hyperd.example", "--san", "192.0.2.7", "--days", "30")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in d.iterdir()) == ["ca.pem", "server-key.pem", "server.pem"]  # no CA key, no more
    assert (d.stat().st_mode & 0o777, (d / "server-key.pem").stat().st_mode & 0o777) == (0o700, 0o600)
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((d / "server.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = set(sans.get_values_for_type(x509.DNSName))
    ips = {str(a) for a in sans.get_values_for_type(x509.IPAddress)}
    assert {socket.gethostname().lower(), "localhost", "hyperd.example"} <= names, names
    assert {"127.0.0.1", "::1", "192.0.2.7"} <= ips, ips
    assert 29 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 30
    server_context(d)  # what hyperd loads

    again = tls_init(d)
    assert again.returncode == 1 and "already holds" in again.stderr and "--force" in again.stderr, again.stderr
    assert (d / "ca.pem").read_bytes() == ca.public_bytes(Encoding.PEM)  # untouched
    forced = tls_init(d, "--force")
    assert forced.returncode == 0, forced.stderr
    assert x509.load_pem_x509_certificate((d / "ca.pem").read_bytes()) != ca  # a new CA: old clients are refused


def test_hyperd_with_listen_but_no_tls_set_refuses_to_start(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERCONTAINER_")}
    r = subprocess.run([str(BIN / "hyperd"), "--root", str(tmp_path / "state"), "--run", str(tmp_path / "run"),
                        "--listen", f"tcp://127.0.0.1:{port}"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "--tls-dir" in r.stderr and f"hyperd tls init {tmp_path / 'state' / 'tls'}" in r.stderr, r.stderr
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not (tmp_path / "state").exists()  # stopped before anything was made


def test_listen_flags(tmp_path: Path) -> None:
    assert tls_init(tmp_path / "tls").returncode == 0
    got: list[HyperdConfig] = []
    env = {**dict.fromkeys(ENVVARS.values()), "HYPERCONTAINER_LISTEN": "tcp://127.0.0.1:2376, tcp://[::1]:2376",
           "HYPERCONTAINER_TLS_DIR": str(tmp_path / "tls")}
    r = CliRunner().invoke(command(got.append), [], env=env)
    assert r.exit_code == 0, r.output
    assert (got[0].listen, got[0].tls_dir) == ((("127.0.0.1", 2376), ("::1", 2376)), tmp_path / "tls")
    assert build().listen == () and build(root=tmp_path).tls_dir == tmp_path / "tls"
    for bad in ("127.0.0.1:2376", "tcp://host", "tcp://h:0", "http://h:1", "tcp://[zz]:1", "tcp://a b:1"):
        with pytest.raises(ConfigError) as e:
            build(listen=[bad], tls_dir=tmp_path / "tls")
        assert e.value.name == "listen", bad
    (tmp_path / "tls" / "server-key.pem").chmod(0o640)
    with pytest.raises(ConfigError) as e:
        build(listen=["tcp://127.0.0.1:1"], tls_dir=tmp_path / "tls")
    assert (e.value.name, "chmod 600" in e.value.reason) == ("tls_dir", True), e.value.reason


def test_which_hyperd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--host, then --context, then HYPERCONTAINER_HOST, then the current context, then the local socket."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("HYPERCONTAINER_SOCKET", "/x/hyperd.sock")
    ctx.save({"current": "b", "contexts": {"a": {"host": "tcp://a:1", "ca": "PEM", "token": "ta"},
                                           "b": {"host": "tcp://[::1]:2", "ca": None, "token": None}}})
    env = {"HYPERCONTAINER_HOST": "tcp://e:3", "HYPERCONTAINER_TLS_CA": "/e.pem", "HYPERCONTAINER_TOKEN": "te"}
    assert ctx.resolve("tcp://h:4", None, None, env) == ctx.Endpoint(host="h", port=4, ca_file=Path("/e.pem"),
                                                                      ca_name="CA /e.pem", token="te")
    assert ctx.resolve(None, None, "a", {}).url == "tcp://a:1"
    assert (ctx.resolve(None, None, "a", {}).ca_pem, ctx.resolve(None, None, "a", {}).token) == ("PEM", "ta")
    assert ctx.resolve(None, "/f.pem", "a", env).ca_file == Path("/f.pem")  # --tls-ca over the context's
    assert ctx.resolve(None, None, "a", env).token == "te"  # and the variable's token over its own
    assert ctx.resolve(None, None, None, env).url == "tcp://e:3"
    assert ctx.resolve(None, None, None, {}).url == "tcp://[::1]:2"
    assert ctx.resolve(None, None, "default", env) == ctx.Endpoint(socket=Path("/x/hyperd.sock"), token="te")
    ctx.save({"current": None, "contexts": {}})
    assert ctx.resolve(None, None, None, {}).url == "unix:///x/hyperd.sock"
    assert ctx.resolve("unix:///y.sock", None, None, {}).socket == Path("/y.sock")
    assert ctx.Endpoint(token="t").headers() == {"Authorization": "Bearer t"} and ctx.Endpoint().headers() == {}


# ---- hyperctl over TLS ----------------------------------------------------------------------------------------


def test_version_info_and_ps_over_tls(remote: Remote) -> None:
    v = remote.hyperctl("version")
    assert v.returncode == 0 and "Server: hyperd" in out(v), err(v)
    info = remote.hyperctl("info", "--json")
    assert info.returncode == 0, err(info)
    assert json.loads(info.stdout)["version"]
    ps = remote.hyperctl("ps", "-a")
    assert ps.returncode == 0 and out(ps).startswith("POD ID"), err(ps)
    by_env = remote.hyperctl("ps", remote=False, HYPERCONTAINER_HOST=f"tcp://localhost:{remote.port}",
                             HYPERCONTAINER_TLS_CA=str(remote.ca))  # a name the certificate has, not an address
    assert by_env.returncode == 0 and out(by_env).startswith("POD ID"), err(by_env)
    local = remote.hyperctl("ps", remote=False)  # neither: the (missing) local socket
    assert local.returncode == 1 and "no-such.sock" in err(local), err(local)


def test_the_token_goes_in_the_authorization_header(remote: Remote) -> None:
    if remote.token is None:
        pytest.skip("this hyperd has no tenants: test_listener_marks_requests_and_carries_the_token covers it")
    anonymous = remote.hyperctl("ps", HYPERCONTAINER_TOKEN="")
    assert anonymous.returncode == 1 and "token" in err(anonymous), err(anonymous)
    wrong = remote.hyperctl("ps", HYPERCONTAINER_TOKEN=remote.token[:-2] + "xx")
    assert wrong.returncode == 1, err(wrong)
    streams = remote.hyperctl("exec", "nosuchpod", "true", HYPERCONTAINER_TOKEN="")  # the websocket's handshake
    assert streams.returncode == 125 and "token" in err(streams), err(streams)
    assert remote.hyperctl("ps").returncode == 0


def test_contexts(remote: Remote) -> None:
    store = remote.config / "hypercontainer" / "contexts.json"
    create = remote.hyperctl("context", "create", "lab", "--host", remote.host, "--tls-ca", str(remote.ca),
                             "--token-stdin", remote=False, input=f"{remote.token or 'unused'}\n".encode())
    assert create.returncode == 0, err(create)
    assert (store.stat().st_mode & 0o777, store.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    dead = f"tcp://127.0.0.1:{free_port()}"
    assert remote.hyperctl("context", "create", "dead", "--host", dead, remote=False).returncode == 0
    dup = remote.hyperctl("context", "create", "lab", "--host", dead, remote=False)
    assert dup.returncode == 1 and "exists" in err(dup)

    ls = out(remote.hyperctl("context", "ls", remote=False)).splitlines()
    assert ls[0].split() == ["NAME", "HOST", "CA", "TOKEN"] and ls[1].startswith("default *"), ls
    assert remote.hyperctl("context", "use", "lab", remote=False).returncode == 0
    assert out(remote.hyperctl("context", "show", remote=False)).strip() == "lab"
    assert [line.split()[:2] for line in out(remote.hyperctl("context", "ls", remote=False)).splitlines()
            if line.startswith("lab")] == [["lab", "*"]]
    token_free = {"HYPERCONTAINER_TOKEN": ""}  # the context's own token is what is sent
    ps = remote.hyperctl("ps", remote=False, **token_free)
    assert ps.returncode == 0 and out(ps).startswith("POD ID"), err(ps)

    # --host and HYPERCONTAINER_HOST come before the current context; --context names another one
    assert remote.hyperctl("context", "use", "dead", remote=False).returncode == 0
    gone = remote.hyperctl("ps", remote=False)
    assert gone.returncode == 1 and f"cannot reach hyperd at {dead}" in err(gone), err(gone)
    assert remote.hyperctl("ps").returncode == 0
    assert remote.hyperctl("ps", remote=False, HYPERCONTAINER_HOST=remote.host,
                           HYPERCONTAINER_TLS_CA=str(remote.ca)).returncode == 0
    assert remote.hyperctl("--context", "lab", "ps", remote=False, **token_free).returncode == 0
    default = remote.hyperctl("--context", "default", "ps", remote=False)
    assert default.returncode == 1 and "no-such.sock" in err(default), err(default)

    in_use = remote.hyperctl("context", "rm", "dead", remote=False)
    assert in_use.returncode == 1 and "current" in err(in_use)
    assert remote.hyperctl("context", "rm", "-f", "dead", "lab", remote=False).returncode == 0
    assert out(remote.hyperctl("context", "show", remote=False)).strip() == "default"
    assert json.loads(store.read_text()) == {"current": None, "contexts": {}}


def test_plain_http_gets_no_api(remote: Remote) -> None:
    """A plain-HTTP client is told the port speaks TLS, and hyperctl pointed at a plain-HTTP server says so."""
    conn = http.client.HTTPConnection("127.0.0.1", remote.port, timeout=10)
    conn.request("GET", "/v1/version")
    r = conn.getresponse()
    assert r.status == 400 and b"TLS only" in r.read()
    conn.close()

    class Plain(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Plain)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host = f"tcp://127.0.0.1:{server.server_address[1]}"
        r2 = remote.hyperctl("ps", remote=False, HYPERCONTAINER_HOST=host, HYPERCONTAINER_TLS_CA=str(remote.ca))
        assert r2.returncode == 1 and f"{host} does not speak TLS" in err(r2), err(r2)
        r3 = remote.hyperctl("run", "--rm", "busybox", "true", remote=False, HYPERCONTAINER_HOST=host,
                             HYPERCONTAINER_TLS_CA=str(remote.ca))
        assert r3.returncode == 125 and "does not speak TLS" in err(r3), err(r3)
    finally:
        server.shutdown()


def test_an_untrusted_certificate_or_a_dead_port_is_one_clear_line(remote: Remote, tmp_path: Path) -> None:
    assert tls_init(tmp_path / "other").returncode == 0
    other = tmp_path / "other" / CA_NAME
    r = remote.hyperctl("ps", remote=False, HYPERCONTAINER_HOST=remote.host, HYPERCONTAINER_TLS_CA=str(other))
    assert r.returncode == 1, err(r)
    assert err(r).startswith(f"hyperctl: TLS certificate of 127.0.0.1 not trusted by CA {other}: "), err(r)
    assert len(err(r).strip().splitlines()) == 1
    system = remote.hyperctl("ps", remote=False, HYPERCONTAINER_HOST=remote.host)  # no CA: the system's
    assert system.returncode == 1 and "not trusted by the system's CAs" in err(system), err(system)
    exec_ = remote.hyperctl("exec", "x", "true", remote=False, HYPERCONTAINER_HOST=remote.host,
                            HYPERCONTAINER_TLS_CA=str(other))  # the websocket says the same
    assert exec_.returncode == 125 and "not trusted by CA" in err(exec_), err(exec_)
    dead = f"tcp://127.0.0.1:{free_port()}"
    d = remote.hyperctl("ps", remote=False, HYPERCONTAINER_HOST=dead, HYPERCONTAINER_TLS_CA=str(remote.ca))
    assert d.returncode == 1 and err(d).startswith(f"hyperctl: cannot reach hyperd at {dead} ("), err(d)
    bad = remote.hyperctl("ps", remote=False, HYPERCONTAINER_HOST="http://127.0.0.1:1")
    assert bad.returncode == 1 and "tcp://HOST:PORT" in err(bad), err(bad)


# ---- the listener's defences ----------------------------------------------------------------------------------


def tls_socket(remote: Remote) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(remote.ca))
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", remote.port), timeout=5),
                           server_hostname="127.0.0.1")


def closed_after(sock: socket.socket, limit: float, trickle: bytes = b"") -> float:
    """Seconds until the server closed `sock`, sending `trickle` every half second meanwhile."""
    start = time.monotonic()
    sock.settimeout(0.5)
    while time.monotonic() - start < limit:
        try:
            if trickle:
                sock.sendall(trickle)
            if sock.recv(4096) == b"":
                break
        except TimeoutError:
            continue
        except OSError:  # reset, or TLS torn down
            break
    return time.monotonic() - start


def test_a_request_that_trickles_in_is_cut_while_others_are_served(remote: Remote) -> None:
    slow = tls_socket(remote)
    slow.sendall(b"GET /v1/version HTTP/1.1\r\nHost: hyperd\r\n")
    served: list[float] = []

    def others() -> None:
        while len(served) < 5:
            t = time.monotonic()
            r = remote.hyperctl("version")
            assert r.returncode == 0, err(r)
            served.append(time.monotonic() - t)

    t = threading.Thread(target=others)
    t.start()
    took = closed_after(slow, listen.HEADER_TIMEOUT + 10, trickle=b"X-Slow: 1\r\n")
    t.join()
    slow.close()
    assert listen.HEADER_TIMEOUT - 1 <= took <= listen.HEADER_TIMEOUT + 3, took
    assert len(served) == 5 and max(served) < 10, served

    idle = socket.create_connection(("127.0.0.1", remote.port), timeout=5)  # not even a TLS handshake
    took = closed_after(idle, listen.HANDSHAKE_TIMEOUT + 10)
    idle.close()
    assert listen.HANDSHAKE_TIMEOUT - 1 <= took <= listen.HANDSHAKE_TIMEOUT + 3, took


def test_a_huge_header_is_refused(remote: Remote) -> None:
    s = tls_socket(remote)
    s.sendall(b"GET /v1/version HTTP/1.1\r\nHost: hyperd\r\nX-Big: " + b"a" * (listen.MAX_HEADER_BYTES * 2) +
              b"\r\n\r\n")
    answer = b""
    with contextlib.suppress(OSError):
        while chunk := s.recv(4096):
            answer += chunk
    s.close()
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    big_token = remote.hyperctl("ps", HYPERCONTAINER_TOKEN="hct_x_" + "a" * listen.MAX_HEADER_BYTES)
    assert big_token.returncode == 1, err(big_token)
    assert "431" in err(big_token) or "lost the connection" in err(big_token), err(big_token)


# ---- the listener with an app that shows what it got ----------------------------------------------------------


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # a thread's server: no signal handlers
        yield


@contextlib.contextmanager
def echo_listener(tmp_path: Path) -> Iterator[tuple[str, Path, list[dict]]]:
    """The TCP listener hyperd makes (listen.config), serving an app that records each request's scope."""
    assert tls_init(tmp_path / "tls").returncode == 0
    seen: list[dict] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        seen.append({"type": scope["type"], "path": scope["path"], "query": scope["query_string"],
                     "remote": scope.get("hc.remote"), "headers": dict(scope["headers"])})
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"version": "echo"}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    port = free_port()
    server = _Server(listen.config(app, server_context(tmp_path / "tls")))
    socks = listen.bind("127.0.0.1", port)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=socks)), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"tcp://127.0.0.1:{port}", tmp_path / "tls" / CA_NAME, seen
    finally:
        server.should_exit = True
        thread.join(10)


def test_past_the_concurrency_limit_requests_and_websockets_get_503(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listen, "MAX_CONCURRENCY", 2)
    with echo_listener(tmp_path) as (host, ca, _):
        port = int(host.rpartition(":")[2])
        ctx = ssl.create_default_context(cafile=str(ca))

        def connect() -> ssl.SSLSocket:
            return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                                   server_hostname="127.0.0.1")

        def status(request: bytes) -> bytes:
            s = connect()
            s.sendall(request)
            answer = s.recv(100)
            s.close()
            return answer.split(b"\r\n")[0]

        get = b"GET /v1/version HTTP/1.1\r\nHost: x\r\n\r\n"
        upgrade = (b"GET /v1/pods/p/exec HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert status(get) == b"HTTP/1.1 200 OK"
        held = [connect(), connect()]
        time.sleep(0.2)  # both handshakes done: two connections open
        assert status(get) == b"HTTP/1.1 503 Service Unavailable"
        assert status(upgrade) == b"HTTP/1.1 503 Service Unavailable"
        for h in held:
            h.close()
        time.sleep(0.2)
        assert status(get) == b"HTTP/1.1 200 OK"


def test_listener_marks_requests_and_carries_the_token(tmp_path: Path) -> None:
    with echo_listener(tmp_path) as (host, ca, seen):
        hyperctl_through(host, ca, seen)


def hyperctl_through(host: str, ca: Path, seen: list[dict]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERCONTAINER_")}
    env.update(HYPERCONTAINER_HOST=host, HYPERCONTAINER_TLS_CA=str(ca), HYPERCONTAINER_TOKEN="hct_id_s3cret")
    r = subprocess.run([str(BIN / "hyperctl"), "version"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Server: hyperd echo" in r.stdout, r.stderr
    subprocess.run([str(BIN / "hyperctl"), "exec", "p", "true"], env=env, capture_output=True, timeout=60)
    assert [(s["type"], s["path"], s["remote"]) for s in seen] == \
        [("http", "/v1/version", True), ("websocket", "/v1/pods/p/exec", True)]
    for s in seen:
        assert s["headers"][b"authorization"] == b"Bearer hct_id_s3cret"
        assert b"s3cret" not in s["query"] and "s3cret" not in s["path"]


# ---- images, no VM --------------------------------------------------------------------------------------------


def test_load_and_save_stream_over_tls(remote: Remote, busybox_tar: Path, tmp_path: Path) -> None:
    loaded = remote.hyperctl("load", "-i", str(busybox_tar))
    assert loaded.returncode == 0 and "Loaded image: " in out(loaded), err(loaded)
    images = remote.hyperctl("images")
    assert "busybox" in out(images), out(images)
    dest = tmp_path / "saved.tar"
    saved = remote.hyperctl("save", "-o", str(dest), "busybox")
    assert saved.returncode == 0, err(saved)
    with tarfile.open(dest) as t:
        assert "manifest.json" in t.getnames()
    events = remote.hyperctl("events", "--since", "1h", "--until", "0s")  # a stream that ends
    assert events.returncode == 0, err(events)


@pytest.mark.skipif(not shutil.which("docker-registry") or not shutil.which("skopeo"),
                    reason="needs docker-registry and skopeo (make test installs them)")
def test_pull_over_tls(remote: Remote, busybox_tar: Path) -> None:
    from .registry import Registry

    reg = Registry()
    try:
        reg.push(f"docker-archive:{busybox_tar}", "remote/busybox:1")
        r = remote.hyperctl("pull", f"{reg.host}/remote/busybox:1")
        assert r.returncode == 0 and out(r).strip() == f"{reg.host}/remote/busybox:1", err(r)
        assert "remote/busybox" in out(remote.hyperctl("images"))
    finally:
        reg.stop()


# ---- pods, remotely -------------------------------------------------------------------------------------------


def first_line(p: subprocess.Popen[bytes], want: bytes, limit: float = 120) -> bytes:
    """Reads p's stdout until a line holds `want`."""
    assert p.stdout is not None
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if want in line:
            return line
        if not line and p.poll() is not None:
            break
    why = p.stderr.read() if p.poll() is not None and p.stderr else b"(still running)"
    raise AssertionError(f"no {want!r} from {p.args}: exit {p.returncode}, {why!r}")


@pytest.mark.vm
def test_pods_over_tls(remote: Remote, busybox_tar: Path) -> None:
    assert remote.hyperctl("load", "-i", str(busybox_tar)).returncode == 0
    r = remote.hyperctl("run", "--rm", "busybox", "echo", "hi")
    assert (r.returncode, out(r)) == (0, "hi\n"), err(r)
    code = remote.hyperctl("run", "--rm", "busybox", "sh", "-c", "exit 3")
    assert code.returncode == 3, err(code)
    cat = remote.hyperctl("run", "--rm", "-i", "busybox", "cat", input=b"through stdin\n")
    assert out(cat) == "through stdin\n", err(cat)

    d = remote.hyperctl("run", "-d", "--name", "ticker", "busybox", "sh", "-c",
                        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done")
    assert d.returncode == 0, err(d)
    try:
        e = remote.hyperctl("exec", "ticker", "sh", "-c", "echo inside; exit 4")
        assert (e.returncode, out(e)) == (4, "inside\n"), err(e)
        logs = remote.hyperctl("logs", "ticker")
        assert "tick 0" in out(logs), err(logs)
        follow = remote.popen("logs", "-f", "-n", "0", "ticker", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        attach = remote.popen("attach", "ticker", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert first_line(follow, b"tick ")
            assert first_line(attach, b"tick ")
        finally:
            for p in (follow, attach):
                p.kill()  # not TERM: attach would pass it on to the container
                p.wait(10)
        assert "ticker" in out(remote.hyperctl("ps"))
        assert json.loads(remote.hyperctl("inspect", "ticker").stdout)["name"] == "ticker"
    finally:
        rm = remote.hyperctl("rm", "-f", "ticker")
        assert rm.returncode == 0, err(rm)


def test_run_it_over_tls(remote: Remote, busybox_tar: Path) -> None:
    """run -it through the TLS listener, in a real terminal: a pty in the container at our size from its start,
    what we type reaching it, its exit code ours."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    assert remote.hyperctl("load", "-i", str(busybox_tar)).returncode == 0
    master, slave = pty.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))

    def ctty() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    p = subprocess.Popen([str(BIN / "hyperctl"), "--host", remote.host, "--tls-ca", str(remote.ca), "run", "-it",
                          "--rm", "busybox", "sh", "-c", "tty; stty size; read x; echo got-$x; exit 7"],
                         stdin=slave, stdout=slave, stderr=slave, env=remote.env(), preexec_fn=ctty)
    os.close(slave)
    seen = b""

    def read_until(marker: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 120
        while marker not in seen and (left := deadline - time.monotonic()) > 0:
            if not select.select([master], [], [], left)[0]:
                break
            try:
                seen += os.read(master, 4096)
            except OSError:
                break

    try:
        read_until(b"33 101")
        assert b"/dev/pts/" in seen and b"33 101" in seen, seen
        os.write(master, b"hello\r")
        read_until(b"got-hello")
        assert b"got-hello" in seen, seen
        assert p.wait(60) == 7
    finally:
        if p.poll() is None:
            p.kill()
        os.close(master)
