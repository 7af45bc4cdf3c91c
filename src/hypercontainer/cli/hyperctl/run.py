"""hyperctl run: create a pod, attach its stdio, exit with the container's exit code."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sys
import termios
import threading
import tty
from pathlib import Path
from typing import Any

import click

from ...client import specs as client_specs
from ...client.specs import env_list
from ...client.stdio import STDIN, exec_request, relay
from ...errors import CommandNotRunnable, HCError, InvalidArgument
from ...spec.publish import parse_publish
from ..client import Client
from .formats import bad_usage

PROXIED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def parse_volumes(specs: tuple[str, ...]) -> tuple[list[dict], list[dict]]:
    """-v HOST:CONTAINER[:ro|rw] or NAME:CONTAINER[:ro|rw] (a named volume: hyperctl volume create) -> (pod volumes,
    container mounts), as the library reads them."""
    try:
        return client_specs.parse_volumes(specs)
    except InvalidArgument as e:
        raise click.BadParameter(e.message, param_hint="-v") from None


ENV_KEY = re.compile(r"^[^=\s\0]+$")


def env_file_lines(path: str) -> list[str]:
    """docker's --env-file: KEY=VALUE lines (the value as written: no quotes removed), '#' comments and blank
    lines skipped, a KEY alone takes our environment's value (or is left out where we have none)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        bad_usage(f"--env-file {path}: cannot read it ({getattr(e, 'strerror', None) or e})")
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if not ENV_KEY.match(key):
            bad_usage(f"--env-file {path}, line {n}: {key!r} is not a variable name")
        if eq:
            out.append(f"{key}={value}")
        elif key in os.environ:
            out.append(f"{key}={os.environ[key]}")
    return out


def env_of(env: tuple[str, ...], env_files: tuple[str, ...]) -> tuple[str, ...]:
    """The env files' variables, then -e's: a later one of the same name wins (docker: -e over the files)."""
    if not env_files:
        return env
    merged: dict[str, str] = {}
    for e in (*(e for f in env_files for e in env_file_lines(f)), *env):
        merged[e.partition("=")[0]] = e
    return tuple(merged.values())


def parse_labels(labels: tuple[str, ...]) -> dict[str, str]:
    """--label KEY=VALUE (KEY alone: an empty value), as docker."""
    out: dict[str, str] = {}
    for text in labels:
        key, _, value = text.partition("=")
        if not key or any(ch.isspace() for ch in key):
            bad_usage(f"--label {text!r}: expected KEY=VALUE")
        out[key] = value
    return out


def parse_hosts(hosts: tuple[str, ...]) -> list[dict]:
    """--add-host NAME:IP (or NAME=IP) -> the spec's hosts entries."""
    import ipaddress

    out = []
    for text in hosts:
        sep = "=" if "=" in text else ":"
        name, _, ip = text.partition(sep)
        try:
            addr = ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            bad_usage(f"--add-host {text!r}: expected NAME:IP (an IPv4 or IPv6 address)")
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", name):
            bad_usage(f"--add-host {text!r}: {name!r} is not a host name")
        out.append({"hostname": name, "ip": str(addr)})
    return out


def container_spec(name: str, image: str, command: tuple[str, ...], env: tuple[str, ...], workdir: str | None,
                   user: str | None, entrypoint: str | None) -> dict:
    """The container part of a spec from docker-style flags (-e KEY takes KEY's value from our environment)."""
    container: dict = {"name": name, "image": image, "env": env_list(env)}
    if command:
        container["command"] = list(command)
    if entrypoint is not None:
        container["entrypoint"] = [entrypoint] if entrypoint else []
    if workdir:
        container["workdir"] = workdir
    if user:
        container["user"] = user
    return container


def security_options(cap_add: tuple[str, ...], cap_drop: tuple[str, ...], privileged: bool,
                     security_opts: tuple[str, ...]) -> dict:
    """docker's --cap-add, --cap-drop, --privileged and --security-opt no-new-privileges as container fields."""
    out: dict = {}
    if cap_add or cap_drop:
        out["capabilities"] = {"add": list(cap_add), "drop": list(cap_drop)}
    if privileged:
        out["privileged"] = True
    for opt in security_opts:
        key, _, value = opt.replace("=", ":", 1).partition(":")
        if key != "no-new-privileges" or value not in ("", "true", "false"):
            raise click.BadParameter(f"{opt!r}: only no-new-privileges[:true|false] is supported",
                                     param_hint="--security-opt")
        out["no_new_privileges"] = value != "false"
    return out


NETWORK_MODES = ("default", "bridge", "user", "none")


def parse_network(value: str) -> str | dict:
    """--net: a mode, ns:PATH (a network namespace: /run/netns/NAME, /proc/PID/ns/net; relative to here), or the
    name of one of your networks (`hyperctl network create`)."""
    if value in NETWORK_MODES:
        return value
    if value.startswith("ns:") and value[3:]:
        return {"namespace": os.path.abspath(value[3:])}
    if re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", value):
        return {"name": value}
    raise click.BadParameter(f"{value!r}: expected one of {', '.join(NETWORK_MODES)}, ns:PATH or a network's name",
                             param_hint="--net")


def build_spec(image: str, command: tuple[str, ...], *, name: str | None, hostname: str | None, env: tuple[str, ...],
               workdir: str | None, user: str | None, tty_: bool, interactive: bool, rm: bool, memory: int | None,
               cpus: int | None, entrypoint: str | None, volumes: tuple[str, ...] = (), restart: str = "Never",
               readonly: bool = False) -> dict:
    pod_volumes, mounts = parse_volumes(volumes)
    container = container_spec(name or "main", image, command, env, workdir, user, entrypoint)
    container.update(tty=tty_, stdin=interactive, volumes=mounts, readonly=readonly)
    spec: dict = {"containers": [container], "auto_remove": rm, "volumes": pod_volumes, "restart_policy": restart}
    if name:
        spec["name"] = name
    if hostname:
        spec["hostname"] = hostname
    resources = {k: v for k, v in (("memory", memory), ("vcpu", cpus)) if v is not None}
    if resources:
        spec["resources"] = resources
    return spec


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _pump_stdin(ws) -> None:
    try:
        while data := os.read(0, 65536):
            ws.send(bytes([STDIN]) + data)
        ws.send(json.dumps({"type": "stdin_eof"}))
    except Exception:
        pass


def attach(ws, first: dict, interactive: bool, tty_: bool) -> int:
    """Sends the first message, then relays stdio, signals and window size until the exit code arrives."""
    first = dict(first)
    raw_mode = tty_ and os.isatty(0)
    if tty_:
        size = shutil.get_terminal_size()
        first.update(rows=size.lines, cols=size.columns)
    ws.send(json.dumps(first))
    saved = termios.tcgetattr(0) if raw_mode else None
    old_handlers = {}

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(Exception):
            ws.send(json.dumps({"type": "signal", "signal": signum}))

    def resize(_signum: int, _frame: object) -> None:
        size = shutil.get_terminal_size()
        with contextlib.suppress(Exception):
            ws.send(json.dumps({"type": "resize", "rows": size.lines, "cols": size.columns}))

    try:
        if raw_mode:
            tty.setraw(0)
            old_handlers[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, resize)
        else:
            for sig in PROXIED_SIGNALS:
                old_handlers[sig] = signal.signal(sig, forward)
        if interactive:
            threading.Thread(target=_pump_stdin, args=(ws,), daemon=True).start()
        return relay(ws, _write_all)  # fd 1 and 2: the frames' stdout and stderr
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


def _options(*decorators: Any) -> Any:
    """The options `run` and `create` share, as one decorator."""
    def apply(f: Any) -> Any:
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


POD_OPTIONS = _options(
    click.option("--rm", is_flag=True, help="Remove the pod when it exits."),
    click.option("-i", "--interactive", is_flag=True, help="Keep stdin open."),
    click.option("-t", "--tty", "tty_", is_flag=True, help="Allocate a pseudo-terminal."),
    click.option("-e", "--env", multiple=True, help="Set an environment variable (KEY=VALUE)."),
    click.option("--env-file", "env_files", multiple=True, metavar="FILE",
                 help="Read environment variables from a file (KEY=VALUE lines, # comments; KEY alone: ours)."),
    click.option("-l", "--label", "labels", multiple=True, metavar="KEY=VALUE", help="Set a label on the pod."),
    click.option("--add-host", "add_hosts", multiple=True, metavar="NAME:IP",
                 help="Add a line to the containers' /etc/hosts."),
    click.option("-w", "--workdir", help="Working directory inside the container."),
    click.option("-u", "--user", help="User: name|uid[:group|gid]."),
    click.option("--name", help="Pod name."),
    click.option("--hostname", help="Hostname inside the VM."),
    click.option("--memory", type=int, help="VM memory in MiB [256]."),
    click.option("--cpus", type=int, help="VM vCPUs [1]."),
    click.option("--entrypoint", help="Override the image's entrypoint."),
    click.option("-v", "--volume", "volumes", multiple=True,
                 help="Share a host directory (HOST:CONTAINER[:ro]) or mount a named volume (VOLUME:CONTAINER[:ro])."),
    click.option("--read-only", "readonly", is_flag=True, help="Mount the container's root read-only."),
    click.option("--restart", type=click.Choice(["no", "on-failure", "always"]), default="no", show_default=True,
                 help="Restart policy (with backoff)."),
    click.option("-p", "--publish", "publish", multiple=True,
                 help="Publish a container port: [IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp]; no host port: any free "
                      "one."),
    click.option("--net", "--network", "network", default="default", show_default=True, metavar="MODE",
                 callback=lambda _ctx, _param, value: parse_network(value),
                 help="Pod network: default (hyperd's mode; a tenant's own network), bridge, user, none, ns:PATH "
                      "(join the existing network namespace at PATH: the VM takes over its interfaces, addresses and "
                      "routes), or NAME, one of your networks (hyperctl network create)."),
    click.option("--boot", type=click.Choice(["default", "cold", "template", "pool"]), default="default",
                 show_default=True, help="Boot the VM cold, start it from a VM template, or take a pre-started one "
                                         "from hyperd's pool (default: hyperd's policy)."),
    click.option("--cap-add", multiple=True, help="Add a Linux capability (NAME, CAP_NAME or ALL)."),
    click.option("--cap-drop", multiple=True, help="Drop a Linux capability (NAME, CAP_NAME or ALL)."),
    click.option("--privileged", is_flag=True, help="Every capability and device, /sys writable, no masked paths."),
    click.option("--security-opt", "security_opts", multiple=True, help="no-new-privileges[:true|false]."),
    click.option("--keep-alive", is_flag=True, help="Keep the pod's VM up when no container runs (until stop or "
                 "rm): containers can be added (create -c) and removed (rm POD/CONTAINER) meanwhile."),
)


def pod_spec(image: str, command: tuple[str, ...], *, rm: bool, interactive: bool, tty_: bool,
             env: tuple[str, ...], env_files: tuple[str, ...], labels: tuple[str, ...], add_hosts: tuple[str, ...],
             workdir: str | None, user: str | None, name: str | None, hostname: str | None, memory: int | None,
             cpus: int | None, entrypoint: str | None, volumes: tuple[str, ...], readonly: bool, restart: str,
             publish: tuple[str, ...], network: str | dict, boot: str, cap_add: tuple[str, ...],
             cap_drop: tuple[str, ...], privileged: bool, security_opts: tuple[str, ...], keep_alive: bool) -> dict:
    """The pod spec of run's (and create's) flags."""
    policy = {"no": "Never", "on-failure": "OnFailure", "always": "Always"}[restart]
    env = env_of(env, env_files)
    spec = build_spec(image, command, name=name, hostname=hostname, env=env, workdir=workdir, user=user,
                      tty_=tty_, interactive=interactive, rm=rm, memory=memory, cpus=cpus, entrypoint=entrypoint,
                      volumes=volumes, restart=policy, readonly=readonly)
    spec["containers"][0].update(security_options(cap_add, cap_drop, privileged, security_opts))
    spec["network"] = network
    spec["boot"] = boot
    spec["keep_alive"] = keep_alive
    spec["ports"] = [parse_publish(p) for p in publish]
    spec["labels"] = parse_labels(labels)
    spec["hosts"] = parse_hosts(add_hosts)
    return spec


@click.command(context_settings={"allow_interspersed_args": False})
@click.option("-d", "--detach", is_flag=True, help="Run in the background and print the pod id.")
@click.option("-f", "--file", "podfile", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A pod spec (JSON or YAML), or a Kubernetes v1 Pod manifest; starts it detached.")
@POD_OPTIONS
@click.argument("image", required=False)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run_cmd(detach: bool, podfile: Path | None, image: str | None, command: tuple[str, ...], **opts: Any) -> None:
    """Run a command in a new pod (its own VM)."""
    client = Client()
    if podfile:
        if image:
            raise click.UsageError("give either -f FILE or IMAGE [COMMAND...], not both")
        click.echo(client.pods.create(spec=load_podfile(podfile), start=True).id)
        return
    if not image:
        raise click.UsageError("missing IMAGE (or -f FILE)")
    spec = pod_spec(image, command, **opts)
    if detach:
        click.echo(client.pods.create(spec=spec, start=True).id)
        return
    sys.exit(attach_or_exit(client, "/v1/pods/run", {"spec": spec}, opts["interactive"], opts["tty_"]))


def load_podfile(path: Path) -> dict:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise click.BadParameter(f"{path}: not valid JSON or YAML ({e})", param_hint="-f") from None
    if not isinstance(doc, dict):
        raise click.BadParameter(f"{path}: expected a pod spec object", param_hint="-f")
    return doc


def attach_or_exit(client: Client, path: str, first: dict, interactive: bool, tty_: bool) -> int:
    with client.websocket(path) as ws:
        try:
            return attach(ws, first, interactive, tty_)
        except CommandNotRunnable as e:
            click.echo(f"hyperctl: {e.message}", err=True)
            sys.exit(e.exit_code)


@click.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open.")
@click.option("-t", "--tty", "tty_", is_flag=True, help="Allocate a pseudo-terminal.")
@click.option("-u", "--user", help="User: name|uid[:group|gid] [the container's].")
@click.option("-e", "--env", multiple=True, help="Set an environment variable (KEY=VALUE).")
@click.option("--env-file", "env_files", multiple=True, metavar="FILE",
              help="Read environment variables from a file (KEY=VALUE lines, # comments; KEY alone: ours).")
@click.option("-w", "--workdir", help="Working directory [the container's].")
@click.option("-d", "--detach", is_flag=True, help="Run it in the background (inspect shows its exit code).")
@click.argument("target", metavar="POD[/CONTAINER]")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(interactive: bool, tty_: bool, user: str | None, env: tuple[str, ...], env_files: tuple[str, ...],
             workdir: str | None, detach: bool, target: str, command: tuple[str, ...]) -> None:
    """Run a command in a running container; exits with its exit code."""
    pod, _, container = target.partition("/")
    env = env_of(env, env_files)
    if detach:
        if interactive or tty_:
            bad_usage("exec -d runs without a terminal or stdin: leave out -i and -t")
        click.echo(Client().pods.handle(pod).exec_detached(command, container=container or None, user=user,
                                                            env=env, workdir=workdir))
        return
    first = exec_request(command, container=container or None, tty=tty_, stdin=interactive, user=user,
                         env=env_list(env), workdir=workdir)
    sys.exit(attach_or_exit(Client(), f"/v1/pods/{pod}/exec", first, interactive, tty_))


ADD_CONTAINER_OPTIONS = ("name", "env", "env_files", "workdir", "user", "entrypoint")  # create -c's


@click.command("create", context_settings={"allow_interspersed_args": False})
@click.option("-c", "--pod", "pod", help="Add the container to this running pod instead (same VM, no reboot); "
              "with it, --name names the container [the image's name].")
@POD_OPTIONS
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def create_cmd(ctx: click.Context, pod: str | None, image: str, command: tuple[str, ...], **opts: Any) -> None:
    """Create a new pod from run's flags without starting it (hyperctl start boots it); prints its id.
    With -c POD: add a container to a running pod and start it."""
    if pod is not None:
        given = [p.opts[-1] for p in ctx.command.params if p.name in opts and p.name not in ADD_CONTAINER_OPTIONS
                 and ctx.get_parameter_source(p.name) != click.core.ParameterSource.DEFAULT]
        if given:
            bad_usage(f"create -c adds a container to a running pod: {', '.join(given)} cannot be given "
                      "with it")
        add_container(pod, image, command, **{k: opts[k] for k in ADD_CONTAINER_OPTIONS})
        return
    spec = pod_spec(image, command, **opts)
    try:
        created = Client().pods.create(spec=spec)
    except HCError as e:  # docker create: 125 when it cannot make the container
        click.echo(f"hyperctl: {e.message}", err=True)
        sys.exit(125)
    click.echo(created.id)


def add_container(pod: str, image: str, command: tuple[str, ...], name: str | None, env: tuple[str, ...],
                  env_files: tuple[str, ...], workdir: str | None, user: str | None, entrypoint: str | None) -> None:
    """create -c POD: a container added to a running pod (same VM, no reboot) and started; prints its name."""
    env = env_of(env, env_files)
    default_name = image.split("/")[-1].split(":")[0].split("@")[0]
    container = container_spec(name or default_name, image, command, env, workdir, user, entrypoint)
    click.echo(Client().request("POST", f"/v1/pods/{pod}/containers", json={"container": container})["name"])


@click.command("attach")
@click.option("--no-stdin", is_flag=True, help="Do not pass stdin.")
@click.argument("target", metavar="POD[/CONTAINER]")
def attach_cmd(no_stdin: bool, target: str) -> None:
    """Attach to a running container's stdio (output from now on); exits with its exit code."""
    pod, _, container = target.partition("/")
    client = Client()
    info = client.request("GET", f"/v1/pods/{pod}")
    containers = info["spec"]["containers"]
    spec: dict[str, Any] = next((c for c in containers if c["name"] == (container or containers[0]["name"])), {})
    sys.exit(attach_or_exit(client, f"/v1/pods/{pod}/attach", {"container": container or None},
                            bool(spec.get("stdin")) and not no_stdin, bool(spec.get("tty"))))


run_cmd.name = "run"
COMMANDS = [run_cmd, exec_cmd, attach_cmd, create_cmd]
