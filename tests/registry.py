"""A real Docker registry (Debian's docker-registry) on 127.0.0.1 for tests, optionally behind token auth
served by a small token server here (the registry itself checks the signed tokens), and skopeo to push. `netns`:
all of it on that network namespace's loopback (for a hyperd that runs in one)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

USER, PASSWORD = "alice", "wonderland"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues ES256 JWTs (x5c chain) the registry trusts through its rootcertbundle."""

    def __init__(self, workdir: Path, service: str, issuer: str, netns: str | None = None) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.service, self.issuer = service, issuer
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hc-test-token")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.cert_path = workdir / "token-cert.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                q = parse_qs(urlparse(self.path).query)
                authz = self.headers.get("Authorization", "")
                user = None
                if authz.startswith("Basic "):
                    u, _, p = base64.b64decode(authz[6:]).decode().partition(":")
                    if (u, p) != (USER, PASSWORD):
                        self.send_response(401)
                        self.end_headers()
                        return
                    user = u
                scopes = q.get("scope", [])
                server.requests.append({"user": user, "scopes": scopes})
                body = json.dumps({"token": server.token(user, scopes)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.port = free_port()
        if netns:  # a socket listens in the namespace it was made in
            from hypercontainer import nsenter

            self.httpd = nsenter.run_in(netns, lambda: ThreadingHTTPServer(("127.0.0.1", self.port), Handler))
        else:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def token(self, user: str | None, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":", 2) if scope.count(":") >= 2 else (scope, "", "")
            # only logged-in users may pull or push; anonymous users get no access
            granted = [a for a in actions.split(",") if a in ("pull", "push")] if user else []
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": user or "", "aud": self.service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def close(self) -> None:
        self.httpd.shutdown()


class Registry:
    def __init__(self, token_auth: bool = False, netns: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hc-registry-"))
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.netns = netns
        self.prefix = ["nsenter", f"--net={netns}"] if netns else []
        self.tokens = TokenServer(self.dir, "hc-test", "hc-test-issuer", netns) if token_auth else None
        config = {"version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
                  "storage": {"filesystem": {"rootdirectory": str(self.dir / "data")}, "delete": {"enabled": True}},
                  "http": {"addr": self.host}}
        if self.tokens:
            config["auth"] = {"token": {"realm": self.tokens.realm, "service": "hc-test", "issuer": "hc-test-issuer",
                                        "rootcertbundle": str(self.tokens.cert_path)}}
        cfg = self.dir / "config.yml"
        cfg.write_text(json.dumps(config))  # JSON is YAML
        self.log = open(self.dir / "registry.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([*self.prefix, "docker-registry", "serve", str(cfg)], stdout=self.log,
                                     stderr=self.log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if netns:
                    from hypercontainer import nsenter

                    nsenter.run_in(netns, lambda: socket.create_connection(("127.0.0.1", self.port), 0.2).close())
                    return
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"registry did not start: {(self.dir / 'registry.log').read_text()}")

    def push(self, source: str, name: str, *extra: str) -> None:
        """skopeo copy SOURCE docker://HOST/NAME (source like docker-archive:/x.tar or oci:/dir:tag)."""
        creds = ["--dest-creds", f"{USER}:{PASSWORD}"] if self.tokens else []
        subprocess.run([*self.prefix, "skopeo", "copy", "-q", "--dest-tls-verify=false", *creds, *extra, source,
                        f"docker://{self.host}/{name}"], check=True, capture_output=True,
                       env=dict(os.environ, REGISTRY_AUTH_FILE=str(self.dir / "skopeo-auth.json")))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()
        if self.tokens:
            self.tokens.close()
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)


def write_oci_layout(dest: Path, images: list[tuple[dict, list[bytes], dict]], tag: str = "latest") -> None:
    """An OCI layout whose `tag` is an image index of the given (config, layers, platform) images."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict:
        d = hashlib.sha256(data).hexdigest()
        (blobs / d).write_bytes(data)
        return {"digest": f"sha256:{d}", "size": len(data)}

    manifests = []
    for config, layers, platform in images:
        config = {**config, "rootfs": {"type": "layers",
                                       "diff_ids": ["sha256:" + hashlib.sha256(lay).hexdigest() for lay in layers]}}
        m = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
             "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(json.dumps(config).encode())},
             "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **put(lay)} for lay in layers]}
        manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                          **put(json.dumps(m).encode()), "platform": platform})
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
    top = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
                                              **put(json.dumps(index).encode()),
                                              "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (dest / "index.json").write_text(json.dumps(top))
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
