"""Writes the seed corpora fuzz/corpus/TARGET/ (committed; run again after changing a target's input format):
`python -m fuzz.make_corpus`. Seeds come from tests/vectors/frames.txt, tests/layers.py's builders and small
hand-written specs, manifests and challenges; each is named after what it is."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import zstandard
from tests.layers import docker_archive, entry, header_only, layer, oci_archive

from hypercontainer.protocol.codec import Msg, encode_ctl, encode_io

FUZZ = Path(__file__).resolve().parent
REPO = FUZZ.parent
SEP = b"\n----\n"


def trim(tar: bytes) -> bytes:
    """A tar without the padding after its end-of-archive blocks (a 10 KiB record becomes a few blocks)."""
    body = tar.rstrip(b"\0")
    return body + b"\0" * (-len(body) % 512) + b"\0" * 1024


def vectors() -> list[tuple[str, str, bytes]]:
    out = []
    for line in (REPO / "tests" / "vectors" / "frames.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, kind, hexdata = line.split()
            out.append((name, kind, bytes.fromhex(hexdata)))
    return out


def codec() -> dict[str, bytes]:
    seeds = {}
    for name, kind, raw in vectors():
        ctl = kind.endswith("ctl")
        seeds[name] = bytes([int(ctl)]) + raw
        seeds[f"{name}-chunked"] = bytes([int(ctl) | 3 << 1, 4, 10, 0]) + raw + raw
    return seeds


def agent_client() -> dict[str, bytes]:
    def w(on_ctl: bool, data: bytes) -> bytes:
        return bytes([int(on_ctl)]) + len(data).to_bytes(2, "big") + data

    version = encode_ctl(Msg.ACK, 1, {"version": 1, "agent": "hc-agent/1", "uptime_ms": 1234})
    ping = encode_ctl(Msg.ACK, 2)
    seeds = {
        "handshake": b"\x04" + w(True, version) + w(True, ping),
        "version-2": b"\x04" + w(True, encode_ctl(Msg.ACK, 1, {"version": 2})),
        "error-phase": b"\x04" + w(True, encode_ctl(Msg.ERROR, 1, {"code": 2, "message": "no", "phase": "exec"})),
        "error-plain": b"\x04" + w(True, encode_ctl(Msg.ERROR, 2, {"code": 22, "message": "bad"})),
        "exited": b"\x04" + w(True, version) + w(True, encode_ctl(Msg.EXITED, 0, {"stream": 2, "status": 137,
                                                                                   "oom_killed": 1})),
        "exited-unknown": b"\x06" + w(True, encode_ctl(Msg.EXITED, 0, {"stream": 6, "status": 0})),
        "exited-status-256": b"\x04" + w(True, encode_ctl(Msg.EXITED, 0, {"stream": 4, "status": 256})),
        "stale-reply-takeover": b"\x14" + w(True, encode_ctl(Msg.ACK, 99)),
        "output": b"\x04" + w(False, encode_io(2, b"hello\n")) + w(False, encode_io(3, b"err")) +
        w(False, encode_io(3, b"")) + w(False, encode_io(3, b"late")) + w(False, encode_io(4, b"tty")) +
        w(False, encode_io(5, b"no stderr on a tty")) + w(False, encode_io(0, b"echo")) +
        w(False, encode_io(2, b"")) + w(True, version),
        "split-frame": b"\x04" + w(True, version[:5]) + w(True, version[5:]) + w(True, ping),
    }
    return seeds


def _tar(*entries: tuple[tarfile.TarInfo, bytes]) -> bytes:
    return trim(layer(*entries))


def unpack() -> dict[str, bytes]:
    ok = _tar(entry("etc", tarfile.DIRTYPE, mode=0o755), entry("etc/hostname", data=b"box\n"),
              entry("bin", tarfile.DIRTYPE), entry("bin/sh", data=b"#!", mode=0o4755),
              entry("bin/ash", tarfile.LNKTYPE, link="bin/sh"), entry("usr/bin/env", tarfile.SYMTYPE, link="/bin/sh"),
              entry("run/fifo", tarfile.FIFOTYPE))
    seeds = {
        "layer": ok,
        "layer.gz": gzip.compress(ok, mtime=0),
        "layer.zst": zstandard.ZstdCompressor().compress(ok),
        "whiteouts": _tar(entry("a", tarfile.DIRTYPE), entry("a/f", data=b"x"), entry("a/.wh.f"),
                          entry("a/.wh..wh..opq"), entry(".wh.b")),
        "xattrs": _tar(entry("f", data=b"x", pax_headers={"SCHILY.xattr.user.k": "v",
                                                          "SCHILY.xattr.security.capability": "c"})),
        "xattr-trusted": _tar(entry("f", data=b"x", pax_headers={"SCHILY.xattr.trusted.overlay.opaque": "y"})),
        "dotdot": _tar(entry("a/../../escape", data=b"x")),
        "absolute": _tar(entry("/etc/passwd", data=b"x")),
        "through-symlink": _tar(entry("link", tarfile.SYMTYPE, link="/"), entry("link/etc/x", data=b"x")),
        "hardlink-outside": _tar(entry("l", tarfile.LNKTYPE, link="../outside/file")),
        "hardlink-dir": _tar(entry("d", tarfile.DIRTYPE), entry("l", tarfile.LNKTYPE, link="d")),
        "device": _tar(entry("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3)),
        "setuid-writable": _tar(entry("s", data=b"x", mode=0o4777)),
        "bomb": trim(header_only("big", 1 << 40) + b"\0" * 1024),
        "replace-dir": _tar(entry("d", tarfile.DIRTYPE), entry("d/f", data=b"1"), entry("d", data=b"file now")),
        "cp-rename": _tar(entry("a", tarfile.DIRTYPE), entry("a/x", data=b"1"), entry("escape/x", data=b"2")),
        "gnu-longname": trim(_gnu()),
    }
    return seeds


def _gnu() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        ti = tarfile.TarInfo("d/" + "n" * 120)
        ti.size = 1
        tf.addfile(ti, io.BytesIO(b"x"))
        sp = tarfile.TarInfo("sparse")
        sp.type = tarfile.GNUTYPE_SPARSE
        tf.addfile(sp)
    return buf.getvalue()


POD = {"name": "web", "hostname": "web-1", "resources": {"vcpu": 2, "memory": 512},
       "containers": [{"name": "app", "image": "busybox:latest", "command": ["sh", "-c", "echo hi"],
                       "entrypoint": ["/bin/sh"], "env": ["A=b"], "workdir": "/tmp", "user": "1000:1000",
                       "tty": True, "volumes": [{"name": "data", "path": "/data", "readonly": True}],
                       "files": [{"path": "/etc/app.conf", "content": "x=1", "mode": "0600"},
                                 {"path": "/etc/b64", "base64": "aGk="}],
                       "ulimits": [{"name": "nofile", "soft": 1024, "hard": 4096}],
                       "sysctls": {"net.ipv4.ip_forward": "1"}, "stop_signal": "SIGTERM",
                       "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]}, "no_new_privileges": True,
                       "pid_namespace": "pod"}],
       "volumes": [{"name": "data", "empty_dir": True}, {"name": "host", "host_path": "/srv"}],
       "dns": ["1.1.1.1"], "dns_search": ["example.com"], "dns_options": ["ndots:2"], "restart_policy": "Always",
       "network": {"name": "mynet"}, "boot": "cold",
       "ports": [{"container_port": 80, "host_port": 8080, "protocol": "tcp"}], "share_process_namespace": True,
       "labels": {"app": "web"}, "hosts": [{"hostname": "db", "ip": "10.0.0.2"}]}


def pod_spec() -> dict[str, bytes]:
    return {
        "minimal": json.dumps({"containers": [{"name": "c", "image": "busybox"}]}).encode(),
        "full": json.dumps(POD).encode(),
        "camel": json.dumps({"name": "p", "keepAlive": True, "network": {"namespace": "/run/netns/x"},
                             "containers": [{"name": "c", "image": "busybox", "noNewPrivileges": True,
                                             "volumes": [{"name": "v", "mountPath": "/v", "readOnly": True}]}],
                             "volumes": [{"name": "v", "block": "/dev/sdb", "fstype": "ext4"}]}).encode(),
        "privileged": json.dumps({"containers": [{"name": "c", "image": "b", "privileged": True}],
                                  "network": "none"}).encode(),
    }


KUBE = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
        "spec": {"hostname": "web", "restartPolicy": "Never", "shareProcessNamespace": True, "nodeName": "x",
                 "containers": [{"name": "app", "image": "busybox", "command": ["sh"], "args": ["-c", "sleep 1"],
                                 "env": [{"name": "A", "value": "b"}, {"name": "F", "valueFrom": {"x": 1}}],
                                 "workingDir": "/tmp", "tty": True, "stdin": True,
                                 "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
                                 "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "privileged": False,
                                                     "allowPrivilegeEscalation": False, "seLinuxOptions": {},
                                                     "readOnlyRootFilesystem": True,
                                                     "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]}},
                                 "resources": {"limits": {"memory": "128Mi", "cpu": "500m"}},
                                 "ports": [{"containerPort": 80, "hostPort": 8080, "protocol": "TCP"}],
                                 "livenessProbe": {}}],
                 "volumes": [{"name": "data", "emptyDir": {}}, {"name": "h", "hostPath": {"path": "/srv"}}]}}


def kube() -> dict[str, bytes]:
    import yaml

    small: dict = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
             "spec": {"containers": [{"name": "c", "image": "busybox",
                                      "resources": {"limits": {"memory": "1Gi", "cpu": 2}}}]}}
    return {"full.json": json.dumps(KUBE).encode(), "full.yaml": yaml.safe_dump(KUBE).encode(),
            "small.yaml": yaml.safe_dump(small).encode(),
            "configmap-volume.json": json.dumps({**small, "spec": {**small["spec"], "volumes": [
                {"name": "c", "configMap": {"name": "x"}}]}}).encode()}


def auth() -> dict[str, bytes]:
    def seed(header: str, registry: str, file: bytes) -> bytes:  # FuzzedDataProvider: lengths first, then bytes
        return header.encode() + b"\0" + registry.encode() + b"\0" + file

    good = json.dumps({"auths": {"registry.test": {"auth": "dXNlcjpwYXNz"}, "bad": {"auth": "!!"}}}).encode()
    return {
        "bearer": seed('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                       'scope="repository:library/busybox:pull"', "docker.io", good),
        "basic": seed('Basic realm="Registry Realm"', "localhost:5000", b"{}"),
        "unquoted": seed("bearer realm=https://a/token, service=reg, error=invalid_token", "r", b"[]"),
        "auths-null": seed("Negotiate", "r", b'{"auths": null, "credHelpers": {}}'),
    }


def _blob_set(manifest: dict, parts: list[bytes], ctype: str, challenge: str = "", token: bytes = b"") -> bytes:
    return SEP.join([challenge.encode(), token, ctype.encode(), json.dumps(manifest).encode(), *parts])


def registry() -> dict[str, bytes]:
    lay = trim(layer(entry("hello", data=b"hi\n")))
    lay_gz = gzip.compress(lay, mtime=0)
    diff_id = "sha256:" + hashlib.sha256(lay).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()

    def desc(blob: bytes, media: str) -> dict:
        return {"mediaType": media, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(), "size": len(blob)}

    oci_m = "application/vnd.oci.image.manifest.v1+json"
    manifest = {"schemaVersion": 2, "mediaType": oci_m,
                "config": desc(config, "application/vnd.oci.image.config.v1+json"),
                "layers": [desc(lay_gz, "application/vnd.oci.image.layer.v1.tar+gzip")]}
    mbytes = json.dumps(manifest).encode()
    index: dict = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{**desc(b"x", oci_m), "platform": {"os": "linux", "architecture": "arm64"}},
                           {**desc(mbytes, oci_m), "platform": {"os": "linux", "architecture": "amd64"}}]}
    docker: dict = {**manifest, "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}
    return {
        "image": _blob_set(manifest, [config, lay_gz], oci_m),
        "docker-v2": _blob_set(docker, [config, lay_gz], docker["mediaType"]),
        "index": _blob_set(index, [mbytes, config, lay_gz], index["mediaType"]),
        "bearer": _blob_set(manifest, [config, lay_gz], oci_m,
                            'Bearer realm="https://auth.test/token",service="reg",scope="repository:fuzz/image:pull"',
                            b'{"token": "t0k3n", "expires_in": 300}'),
        "bearer-access-token": _blob_set(manifest, [config, lay_gz], oci_m, 'Bearer realm="https://auth.test/t"',
                                         b'{"access_token": "x"}'),
        "basic": _blob_set(manifest, [config, lay_gz], oci_m, 'Basic realm="r"'),
        "schema1": _blob_set({"schemaVersion": 1, "name": "x", "fsLayers": []}, [],
                             "application/vnd.docker.distribution.manifest.v1+prettyjws"),
        "layer-count": _blob_set({**manifest, "layers": []}, [config], oci_m),
    }


def archive() -> dict[str, bytes]:
    lay = trim(layer(entry("hello", data=b"hi\n"), entry("bin", tarfile.DIRTYPE)))
    return {"docker": trim(docker_archive([lay], cmd=["sh"])),
            "docker.gz": gzip.compress(trim(docker_archive([lay])), mtime=0),
            "oci": trim(oci_archive(gzip.compress(lay, mtime=0)))}


def agent_proto() -> dict[str, bytes]:
    return codec()  # the same input format: a channel and chunking byte, then the stream


def agent_net() -> dict[str, bytes]:
    seeds = {name: b"\x01" + raw[12:] for name, kind, raw in vectors() if name.startswith("start-pod-net")}
    for i, (cidr, route) in enumerate((("10.77.0.2/16", 0), ("2001:db8::2/64", 0), ("0.0.0.0/0", 1), ("::/0", 1),
                                       ("192.0.2.1/33", 0), ("fe80::1%eth0/64", 0))):
        seeds[f"cidr-{i}"] = bytes([route << 1]) + cidr.encode()
    return seeds


def agent_security() -> dict[str, bytes]:
    return {
        "seccomp": b"\x00BgAAAAAA/38=",
        "seccomp-log": bytes([2 << 3]) + b"BgAAAAAA/38=",
        "seccomp-two": b"\x01IAAAAAQAAAAVAAEAPgAAwAYAAAAAAP9/",
        "seccomp-unpadded": b"\x00BgAAAAAA/38",
        "rlimit": b"\x02nofile:1024:4096",
        "rlimit-unlimited": b"\x02core:-1:-1",
        "path": b"\x03/proc/kcore",
        "path-dots": b"\x03/a/../b",
        "status": b"\x04Name:\tsh\nSigCgt:\t0000000000010002\nCapEff:\t00000000a80425fb\n",
        "oom": b"\x05oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    }


def agent_tar() -> dict[str, bytes]:
    return {name: data for name, data in unpack().items() if not name.endswith((".gz", ".zst"))}


def main() -> None:
    for name, make in (("codec", codec), ("agent_client", agent_client), ("unpack", unpack), ("pod_spec", pod_spec),
                       ("kube", kube), ("auth", auth), ("registry", registry), ("archive", archive),
                       ("agent_proto", agent_proto), ("agent_net", agent_net), ("agent_security", agent_security),
                       ("agent_tar", agent_tar)):
        out = FUZZ / "corpus" / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        seeds = make()
        for seed_name, data in seeds.items():
            (out / seed_name).write_bytes(data)
        print(f"{name}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")


if __name__ == "__main__":
    main()
