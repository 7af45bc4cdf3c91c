"""hyperctl ps, rm, logs, inspect, kill."""

from __future__ import annotations

import json
import os
import time

import click

from ...errors import HCError, NotFound
from ...signals import parse_signal
from ..client import Client, dumps, for_each


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
    if p["state"] in ("exited", "failed"):
        return f"Exited ({p.get('exit_code')}) {ago(p.get('finished'))}".rstrip()
    return p["state"].capitalize()


@click.command("ps")
@click.option("-a", "--all", "all_", is_flag=True, help="Show all pods (default: running ones).")
@click.option("-q", "--quiet", is_flag=True, help="Only print ids.")
def ps(all_: bool, quiet: bool) -> None:
    """List pods."""
    pods = [p for p in Client().request("GET", "/v1/pods") if all_ or p["state"] in ("running", "starting")]
    if quiet:
        for p in pods:
            click.echo(p["id"][:12])
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("POD ID", "NAME", "IMAGE", "COMMAND", "CREATED", "STATUS"):
        t.add_column(col, no_wrap=True)
    for p in pods:
        cmd = " ".join(p.get("command") or [])
        t.add_row(p["id"][:12], p["name"], p["image"], f'"{cmd[:24]}"' if cmd else "", ago(p["created"]), status(p))
    Console(width=200).print(t)


@click.command("rm")
@click.option("-f", "--force", is_flag=True, help="Stop a running pod first.")
@click.argument("pods", nargs=-1, required=True)
def rm(force: bool, pods: tuple[str, ...]) -> None:
    """Remove pods (with -f, running ones too)."""
    client = Client()
    for_each(pods, lambda ref: [ref] if client.request("DELETE", f"/v1/pods/{ref}", params={"force": force})
             else [])


@click.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming while the container runs.")
@click.option("-t", "--timestamps", is_flag=True, help="Prefix each chunk with its time.")
@click.option("-c", "--container", help="Container of the pod [its first].")
@click.argument("pod")
def logs(follow: bool, timestamps: bool, container: str | None, pod: str) -> None:
    """Print a container's output (stdout to stdout, stderr to stderr)."""
    params = {"follow": follow} | ({"container": container} if container else {})
    for line in Client().stream_lines(f"/v1/pods/{pod}/logs", **params):
        if not line.strip():
            continue
        rec = json.loads(line)
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


COMMANDS = [ps, rm, logs, inspect, stop, kill]
