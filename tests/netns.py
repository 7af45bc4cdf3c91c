"""Network namespaces the tests make for themselves: hyperd's "host" and a "world" beyond it, joined by a veth.

Test traffic stays inside them: the world is 198.51.100.0/24 (TEST-NET-2), the host's default route points at
it, and nothing is ever sent to an address outside these namespaces.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

HOST_IP, WORLD_IP = "198.51.100.2", "198.51.100.1"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    @property
    def path(self) -> Path:
        return Path("/run/netns") / self.name

    def argv(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net={self.path}", *argv]

    def run(self, *argv: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*argv), capture_output=True, timeout=timeout, **kw)

    def popen(self, *argv: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*argv), **kw)

    def links(self) -> list[str]:
        out = subprocess.run(["ip", "-n", self.name, "-o", "link"], capture_output=True, text=True).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def host_and_world() -> tuple[Netns, Netns]:
    tag = str(os.getpid())
    host, world = Netns(f"hct-host-{tag}"), Netns(f"hct-world-{tag}")
    sh("ip", "link", "add", "hct-up", "netns", host.name, "type", "veth", "peer", "name", "hct-down", "netns",
       world.name)
    sh("ip", "-n", host.name, "addr", "add", f"{HOST_IP}/24", "dev", "hct-up")
    sh("ip", "-n", host.name, "link", "set", "hct-up", "up")
    sh("ip", "-n", host.name, "route", "add", "default", "via", WORLD_IP)
    sh("ip", "-n", world.name, "addr", "add", f"{WORLD_IP}/24", "dev", "hct-down")
    sh("ip", "-n", world.name, "link", "set", "hct-down", "up")
    return host, world


def fetch(ns: Netns, url: str, tries: int = 60) -> str:
    """GET through busybox wget inside a namespace, retrying while the pod's server comes up."""
    for _ in range(tries):
        r = ns.run("timeout", "5", "busybox", "wget", "-q", "-O-", url)
        if r.returncode == 0:
            return r.stdout.decode()
        time.sleep(0.25)
    raise AssertionError(f"{url}: {r.stderr.decode()}")
