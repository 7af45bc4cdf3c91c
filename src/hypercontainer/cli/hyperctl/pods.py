"""hyperctl ps, rm, logs, inspect, port, stop, kill, pause, unpause, events."""

from __future__ import annotations

import json
import os
import time

import click

from ...errors import HCError, NotFound
from ...signals import parse_signal
from ..client import Client, dumps, error_from, for_each


def ago(ts: float | None) -> str:
    if not ts:
        return ""
    s = max(0, int(time.time() - ts))
    for unit, n in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= n:
            v = s // n
            return f"{v} {unit}{'s' if v > 1 else ''} ago"
    return f"{s} seconds ago"


def status(p: dict) -> str:
    if p["state"] == "running":
        return "Up"
    if p["state"] == "paused":
        return "Up (Paused)"
    if p["state"] in ("exited", "failed"):
        return f"Exited ({p.get('exit_code')}) {ago(p.get('finished'))}".rstrip()
    return p["state"].capitalize()


@click.command("ps")
@click.option("-a", "--all", "all_", is_flag=True, help="Show all pods (default: running ones).")
@click.option("-q", "--quiet", is_flag=True, help="Only print ids.")
def ps(all_: bool, quiet: bool) -> None:
    """List pods."""
    pods = [p for p in Client().request("GET", "/v1/pods") if all_ or p["state"] in ("running", "starting", "paused")]
    if quiet:
        for p in pods:
            click.echo(p["id"][:12])
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("POD ID", "NAME", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS"):
        t.add_column(col, no_wrap=True)
    for p in pods:
        cmd = " ".join(p.get("command") or [])
        live = p["state"] in ("running", "paused")
        ports = ", ".join(f"{m['host_ip']}:{m['host_port']}->{m['container_port']}/{m['protocol']}"
                          for m in (p.get("network") or {}).get("ports", []) if live)
        name = p["name"] + (" (CRI)" if "cri" in (p.get("meta") or {}) else "")
        image = p["image"] or (f"{len(p.get('containers') or [])} containers" if p.get("spec", {}).get("keep_alive")
                               else "")
        t.add_row(p["id"][:12], name, image, f'"{cmd[:24]}"' if cmd else "", ago(p["created"]), status(p), ports)
    Console(width=200).print(t)


@click.command("rm")
@click.option("-f", "--force", is_flag=True, help="Stop a running pod (or container) first.")
@click.argument("pods", nargs=-1, required=True, metavar="POD[/CONTAINER]...")
def rm(force: bool, pods: tuple[str, ...]) -> None:
    """Remove pods, or single containers of a running pod (with -f, running ones too)."""
    client = Client()

    def one(ref: str) -> list[str]:
        pod, _, container = ref.partition("/")
        path = f"/v1/pods/{pod}/containers/{container}" if container else f"/v1/pods/{pod}"
        return [ref] if client.request("DELETE", path, params={"force": force}) else []

    for_each(pods, one)


def parse_time(text: str) -> float:
    """'10s', '5m', '2h', '1d' ago, an ISO 8601 time, or seconds since the epoch."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
            return time.time() - float(text[:-1]) * units[text[-1]]
        if text.replace(".", "", 1).isdigit():
            return float(text)
        import datetime as dt

        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise click.BadParameter(f"{text!r}: give a duration (10s, 5m, 2h) or a time (2026-01-02T15:04:05)") \
            from None


@click.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming while the container runs.")
@click.option("-t", "--timestamps", is_flag=True, help="Prefix each chunk with its time.")
@click.option("-n", "--tail", type=int, help="Only the last N chunks.")
@click.option("--since", help="Only output since a time or a duration ago (10s, 5m).")
@click.option("-c", "--container", help="Container of the pod [its first].")
@click.argument("pod")
def logs(follow: bool, timestamps: bool, tail: int | None, since: str | None, container: str | None,
         pod: str) -> None:
    """Print a container's output (stdout to stdout, stderr to stderr)."""
    params: dict = {"follow": follow} | ({"container": container} if container else {})
    if tail is not None:
        params["tail"] = tail
    if since:
        params["since"] = parse_time(since)
    for line in Client().stream_lines(f"/v1/pods/{pod}/logs", **params):
        if not line.strip():
            continue
        rec = json.loads(line)
        if "error" in rec:  # hyperd ended the stream (a remote token revoked while it ran)
            raise error_from(rec["error"], 500)
        data = rec["log"].encode("utf-8", "surrogateescape")
        if timestamps:
            data = rec["time"].encode() + b" " + data
        os.write(2 if rec["stream"] == "stderr" else 1, data)


@click.command("inspect")
@click.argument("ref")
def inspect(ref: str) -> None:
    """Show a pod's or an image's details as JSON."""
    client = Client()
    try:
        click.echo(dumps(client.request("GET", f"/v1/pods/{ref}")))
    except NotFound:
        click.echo(dumps(client.request("GET", f"/v1/images/{ref}")))


@click.command("port")
@click.argument("ref")
@click.argument("private", required=False)
def port(ref: str, private: str | None) -> None:
    """List a pod's published ports, or the host address of one (PORT[/PROTO])."""
    mappings = (Client().request("GET", f"/v1/pods/{ref}").get("network") or {}).get("ports", [])
    if private:
        num, _, proto = private.partition("/")
        mappings = [m for m in mappings if str(m["container_port"]) == num and m["protocol"] == (proto or "tcp")]
        if not mappings:
            raise HCError(f"no public port {private} published for {ref}")
        for m in mappings:
            click.echo(f"{m['host_ip']}:{m['host_port']}")
        return
    for m in mappings:
        click.echo(f"{m['container_port']}/{m['protocol']} -> {m['host_ip']}:{m['host_port']}")


@click.command("stop")
@click.option("-t", "--time", "timeout", default=10.0, show_default=True, help="Seconds before SIGKILL.")
@click.argument("pods", nargs=-1, required=True)
def stop(timeout: float, pods: tuple[str, ...]) -> None:
    """Stop pods: the stop signal, then SIGKILL after the grace period."""
    client = Client(timeout=timeout + 60)
    for ref in pods:
        client.request("POST", f"/v1/pods/{ref}/stop", params={"timeout": timeout})
        click.echo(ref)


@click.command("kill")
@click.option("-s", "--signal", "sig", default="KILL", help="Signal name or number [KILL].")
@click.argument("pod")
def kill(sig: str, pod: str) -> None:
    """Send a signal to a pod's container."""
    try:
        num = parse_signal(sig)
    except HCError as e:
        raise click.BadParameter(e.message) from None
    Client().request("POST", f"/v1/pods/{pod}/kill", json={"signal": num})
    click.echo(pod)


@click.command("pause")
@click.argument("pods", nargs=-1, required=True)
def pause(pods: tuple[str, ...]) -> None:
    """Pause pods (their VMs' CPUs stop)."""
    client = Client()
    for_each(pods, lambda ref: [ref] if client.request("POST", f"/v1/pods/{ref}/pause") is not None else [])


@click.command("unpause")
@click.argument("pods", nargs=-1, required=True)
def unpause(pods: tuple[str, ...]) -> None:
    """Resume paused pods."""
    client = Client()
    for_each(pods, lambda ref: [ref] if client.request("POST", f"/v1/pods/{ref}/unpause") is not None else [])


@click.command("events")
@click.option("--since", help="Also show events since a time or a duration ago.")
@click.option("--until", help="Stop at a time or a duration from now ('0s': now).")
def events(since: str | None, until: str | None) -> None:
    """Stream pod events (create, start, running, pause, unpause, restart, exec, die, fail, destroy)."""
    params: dict = {}
    if since:
        params["since"] = parse_time(since)
    if until:  # a duration counts forward from now
        now = time.time()
        params["until"] = 2 * now - parse_time(until) if until[-1:] in "smhd" else parse_time(until)
    for line in Client(timeout=None).stream_lines("/v1/events", **params):
        if not line.strip():
            continue
        ev = json.loads(line)
        if "error" in ev:  # hyperd ended the stream (a remote token revoked while it ran)
            raise error_from(ev["error"], 500)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ev["time"]))
        extra = ", ".join(f"{k}={' '.join(f'{n}:{t}s' for n, t in v.items()) if isinstance(v, dict) else v}"
                          for k, v in ev.items() if k not in ("time", "type", "action", "id"))
        click.echo(f"{stamp} pod {ev['action']} {ev['id'][:12]} ({extra})")


COMMANDS = [ps, rm, logs, inspect, port, stop, kill, pause, unpause, events]
