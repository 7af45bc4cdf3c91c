"""Pod specs from docker-like arguments (`pods.run`, `pods.create`): the spec a one-container pod is made from.
Its fields are spec/pod.py's; what these options do not cover, give as a whole spec (`spec=`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TypedDict

from ..errors import InvalidArgument

RESTART = {"no": "Never", "on-failure": "OnFailure", "always": "Always"}


class PodOptions(TypedDict, total=False):
    """Options of `PodCollection.run` and `PodCollection.create`, as docker's (all optional)."""

    name: str
    """The pod's name (and a container name "main")."""
    hostname: str
    """The hostname inside the VM."""
    env: Mapping[str, str] | Sequence[str]
    """Environment variables: {KEY: VALUE}, or "KEY=VALUE" strings ("KEY" alone: this process's value)."""
    labels: Mapping[str, str]
    """Labels of the pod."""
    volumes: Sequence[str]
    """"HOST:CONTAINER[:ro|rw]" (an absolute host path) or "VOLUME:CONTAINER[:ro|rw]" (a named volume)."""
    ports: Sequence[str]
    """Published ports, as `hyperctl run -p`: "[IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp]"."""
    memory: int
    """VM memory in MiB (hyperd's default: 256)."""
    cpus: int
    """VM vCPUs (default 1)."""
    workdir: str
    """Working directory inside the container."""
    user: str
    """name|uid[:group|gid]."""
    entrypoint: str | Sequence[str]
    """Overrides the image's entrypoint ("" or []: none)."""
    auto_remove: bool
    """Remove the pod once it exits (`run --rm`)."""
    restart_policy: str
    """"no" (default), "on-failure" or "always"."""
    network: str
    """default, bridge, user, none, or the name of one of your networks."""


def parse_volumes(specs: Sequence[str]) -> tuple[list[dict], list[dict]]:
    """"HOST:CONTAINER[:ro|rw]" or "NAME:CONTAINER[:ro|rw]" (a named volume) -> (pod volumes, container mounts).
    As docker: a source that is not an absolute path names a volume."""
    volumes, mounts = [], []
    for i, text in enumerate(specs):
        parts = text.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise InvalidArgument(f"{text!r}: expected HOST:CONTAINER[:ro|rw] or VOLUME:CONTAINER[:ro|rw]")
        source = "host_path" if parts[0].startswith("/") else "named"
        volumes.append({"name": f"v{i}", source: parts[0]})
        mounts.append({"name": f"v{i}", "path": parts[1], "readonly": len(parts) == 3 and parts[2] == "ro"})
    return volumes, mounts


def env_list(env: Mapping[str, str] | Sequence[str]) -> list[str]:
    """KEY=VALUE strings; a KEY alone takes this process's value (docker's -e KEY)."""
    if isinstance(env, Mapping):
        return [f"{k}={v}" for k, v in env.items()]
    return [e if "=" in e else f"{e}={os.environ.get(e, '')}" for e in env]


def pod_spec(image: str, command: str | Sequence[str] | None, options: PodOptions) -> dict:
    """The spec of a pod with one container ("main") of `image`."""
    from ..spec.publish import parse_publish

    unknown = set(options) - set(PodOptions.__annotations__)
    if unknown:
        raise InvalidArgument(f"unknown pod option(s): {', '.join(sorted(unknown))}")
    container: dict = {"name": "main", "image": image, "env": env_list(options.get("env", ()))}
    if command is not None:
        container["command"] = _argv(command)
    if "entrypoint" in options:
        ep = options["entrypoint"]
        container["entrypoint"] = ([ep] if ep else []) if isinstance(ep, str) else list(ep)
    for key in ("workdir", "user"):
        if key in options:
            container[key] = options.get(key)
    pod_volumes, container["volumes"] = parse_volumes(options.get("volumes", ()))
    restart = options.get("restart_policy", "no")
    if restart not in RESTART:
        raise InvalidArgument(f"restart_policy {restart!r}: one of {', '.join(RESTART)}")
    spec: dict = {"containers": [container], "volumes": pod_volumes, "auto_remove": options.get("auto_remove", False),
                  "restart_policy": RESTART[restart], "labels": dict(options.get("labels", {})),
                  "ports": [parse_publish(p) for p in options.get("ports", ())]}
    for key in ("name", "hostname"):
        if key in options:
            spec[key] = options.get(key)
    if "network" in options:
        net = options["network"]
        spec["network"] = net if net in ("default", "bridge", "user", "none") else {"name": net}
    resources = {k: options.get(o) for o, k in (("memory", "memory"), ("cpus", "vcpu")) if o in options}
    if resources:
        spec["resources"] = resources
    return spec


def _argv(command: str | Sequence[str]) -> list[str]:
    """A command as a list; a string is split as a shell would (docker-py's way)."""
    if isinstance(command, str):
        import shlex

        return shlex.split(command)
    return list(command)
