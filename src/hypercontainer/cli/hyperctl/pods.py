"""hyperctl ps, rm, logs, inspect, port, stop, kill, pause, unpause, events, wait, start, restart, rename."""

from __future__ import annotations

import json
import os
import re
import sys
import time

import click

from ...client.filters import DOCKER_STATE, KEYS, STATUSES
from ...client.filters import labels_of as _labels
from ...client.filters import matches as matches
from ...errors import HCError, NotFound
from ...signals import parse_signal
from ..client import Client, dumps, for_each
from .formats import align, bad_usage, check_template, render, template_of


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


FILTER_KEYS = KEYS  # the library's (hypercontainer.client.filters), as DOCKER_STATE and matches
# ps --format's fields ({{.Field}}) and their table headers
FIELDS = {"ID": "POD ID", "Names": "NAMES", "Image": "IMAGE", "Command": "COMMAND", "CreatedAt": "CREATED AT",
          "RunningFor": "CREATED", "Status": "STATUS", "State": "STATE", "Ports": "PORTS", "Labels": "LABELS"}
POD_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")  # spec/pod.py's Name


def parse_filters(filters: tuple[str, ...]) -> dict[str, list[str]]:
    """--filter KEY=VALUE, repeatable: the values of each key (docker: the same key ORs, except label, whose
    filters AND; different keys AND)."""
    out: dict[str, list[str]] = {}
    for f in filters:
        key, eq, value = f.partition("=")
        if not eq or key not in FILTER_KEYS or not value:
            bad_usage(f"invalid filter {f!r}: expected KEY=VALUE with KEY one of {', '.join(FILTER_KEYS)}")
        if key == "status" and value not in STATUSES:
            bad_usage(f"invalid filter {f!r}: the status is one of {', '.join(STATUSES)}")
        out.setdefault(key, []).append(value)
    return out


def ports_of(p: dict) -> str:
    if p["state"] not in ("running", "paused"):
        return ""
    return ", ".join(f"{m['host_ip']}:{m['host_port']}->{m['container_port']}/{m['protocol']}"
                     for m in (p.get("network") or {}).get("ports", []))


def fields_of(p: dict) -> dict[str, str]:
    import datetime as dt

    cmd = " ".join(p.get("command") or [])
    image = p["image"] or (f"{len(p.get('containers') or [])} containers" if (p.get("spec") or {}).get("keep_alive")
                           else "")
    created = dt.datetime.fromtimestamp(p["created"], dt.UTC).astimezone()
    return {"ID": p["id"][:12], "Names": p["name"], "Image": image, "Command": f'"{cmd}"' if cmd else "",
            "CreatedAt": created.strftime("%Y-%m-%d %H:%M:%S %z %Z"), "RunningFor": ago(p["created"]),
            "Status": status(p), "State": DOCKER_STATE.get(p["state"], p["state"]), "Ports": ports_of(p),
            "Labels": ",".join(f"{k}={v}" for k, v in sorted(_labels(p).items()))}


def print_table(template: str, rows: list[dict[str, str]]) -> None:
    """A template's lines, their tab-separated columns aligned (docker's tabwriter), under a header."""
    lines = [render(template, FIELDS)] + [render(template, r) for r in rows]
    for line in align([ln.split("\t") for ln in lines]):
        click.echo(line)


@click.command("ps")
@click.option("-a", "--all", "all_", is_flag=True, help="Show all pods (default: running ones).")
@click.option("-q", "--quiet", is_flag=True, help="Only print ids.")
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Only pods that match: name=, label=KEY[=VALUE], status=(created|running|paused|exited), id= "
                   "(a prefix), ancestor=IMAGE. Repeatable: the same key ORs (label ANDs, as docker), different keys "
                   "AND.")
@click.option("--format", "fmt", metavar="FORMAT",
              help="table (default), json (one object a line), or a template of {{.Field}}s (\\t: a tab; "
                   "'table TEMPLATE': aligned, with headers): ID, Names, Image, Command, CreatedAt, RunningFor, "
                   "Status, State, Ports, Labels.")
def ps(all_: bool, quiet: bool, filters: tuple[str, ...], fmt: str | None) -> None:
    """List pods."""
    wanted = parse_filters(filters)
    template = template_of(fmt)
    if template not in ("", "table", "json"):
        check_template(template.removeprefix("table "), FIELDS)
    pods = [p.attrs for p in Client().pods.list(all=all_, filters=wanted)]
    if quiet:
        for p in pods:
            click.echo(p["id"][:12])
        return
    if template == "json":
        for p in pods:
            click.echo(json.dumps(fields_of(p)))
        return
    if template.startswith("table "):
        print_table(template.removeprefix("table "), [fields_of(p) for p in pods])
        return
    if template and template != "table":
        for p in pods:
            click.echo(render(template, fields_of(p)))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("POD ID", "NAME", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS"):
        t.add_column(col, no_wrap=True)
    for p in pods:
        cmd = " ".join(p.get("command") or [])
        name = p["name"] + (" (CRI)" if "cri" in (p.get("meta") or {}) else "")
        image = fields_of(p)["Image"]
        t.add_row(p["id"][:12], name, image, f'"{cmd[:24]}"' if cmd else "", ago(p["created"]), status(p), ports_of(p))
    Console(width=200).print(t)


@click.command("wait")
@click.argument("pods", nargs=-1, required=True)
def wait(pods: tuple[str, ...]) -> None:
    """Block until each pod's (first) container exits; print each exit code, exit with the first one's."""
    client = Client()
    codes: list[int] = []
    failed = False
    for ref in pods:
        try:
            codes.append(client.pods.handle(ref).wait())
            click.echo(codes[-1])
        except HCError as e:
            click.echo(f"hyperctl: {e.message}", err=True)
            failed = True
    sys.exit(codes[0] if codes and not failed else 1 if failed else 0)


@click.command("start")
@click.option("-a", "--attach", is_flag=True, help="Print the pod's output until it exits; exit with its code.")
@click.argument("pods", nargs=-1, required=True)
def start(attach: bool, pods: tuple[str, ...]) -> None:
    """Start pods that were stopped (or created): each boots again with its spec (same name, volumes, ports)."""
    client = Client()
    if attach:
        if len(pods) > 1:
            bad_usage("start -a: one pod at a time")
        started = time.time()  # its output from then on: the log keeps it, nothing is missed before a stream opens
        pod = client.pods.handle(pods[0])
        pod.start()
        for rec in pod.log_records(follow=True, since=started):
            out = sys.stdout if rec.stream == "stdout" else sys.stderr
            out.buffer.write(rec.data)
            out.flush()
        sys.exit(pod.wait())

    def one(ref: str) -> list[str]:
        client.pods.handle(ref).start()
        return [ref]

    for_each(pods, one)


@click.command("restart")
@click.option("-t", "--time", "timeout", default=10.0, show_default=True, help="Seconds before SIGKILL.")
@click.argument("pods", nargs=-1, required=True)
def restart(timeout: float, pods: tuple[str, ...]) -> None:
    """Restart pods: stop (the stop signal, SIGKILL after the grace period), then start again."""
    if timeout < 0:
        bad_usage(f"restart -t {timeout:g}: the grace period is 0 seconds or more")
    client = Client()

    def one(ref: str) -> list[str]:
        client.pods.handle(ref).restart(timeout)
        return [ref]

    for_each(pods, one)


@click.command("rename")
@click.argument("pod")
@click.argument("new_name")
def rename(pod: str, new_name: str) -> None:
    """Rename a pod."""
    if not POD_NAME.match(new_name):
        bad_usage(f"invalid name {new_name!r}: 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit")
    Client().pods.handle(pod).rename(new_name)


@click.command("rm")
@click.option("-f", "--force", is_flag=True, help="Stop a running pod (or container) first.")
@click.argument("pods", nargs=-1, required=True, metavar="POD[/CONTAINER]...")
def rm(force: bool, pods: tuple[str, ...]) -> None:
    """Remove pods, or single containers of a running pod (with -f, running ones too)."""
    client = Client()

    def one(ref: str) -> list[str]:
        pod, _, container = ref.partition("/")
        handle = client.pods.handle(pod)
        return [ref] if (handle.remove_container(container, force) if container else handle.remove(force)) else []

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
    records = Client().pods.handle(pod).log_records(follow=follow, tail=tail, container=container or None,
                                                     since=parse_time(since) if since else None)
    for rec in records:  # hyperd ending the stream (a remote token revoked while it ran) is raised
        data = rec.time.encode() + b" " + rec.data if timestamps else rec.data
        os.write(2 if rec.stream == "stderr" else 1, data)


@click.command("inspect")
@click.argument("ref")
def inspect(ref: str) -> None:
    """Show a pod's or an image's details as JSON."""
    client = Client()
    try:
        click.echo(dumps(client.pods.get(ref).attrs))
    except NotFound:
        click.echo(dumps(client.images.get(ref).attrs))


@click.command("port")
@click.argument("ref")
@click.argument("private", required=False)
def port(ref: str, private: str | None) -> None:
    """List a pod's published ports, or the host address of one (PORT[/PROTO])."""
    mappings = (Client().pods.get(ref).attrs.get("network") or {}).get("ports", [])
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
    client = Client()
    for ref in pods:
        client.pods.handle(ref).stop(timeout)
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
    Client().pods.handle(pod).kill(num)
    click.echo(pod)


@click.command("pause")
@click.argument("pods", nargs=-1, required=True)
def pause(pods: tuple[str, ...]) -> None:
    """Pause pods (their VMs' CPUs stop)."""
    client = Client()

    def one(ref: str) -> list[str]:
        client.pods.handle(ref).pause()
        return [ref]

    for_each(pods, one)


@click.command("unpause")
@click.argument("pods", nargs=-1, required=True)
def unpause(pods: tuple[str, ...]) -> None:
    """Resume paused pods."""
    client = Client()

    def one(ref: str) -> list[str]:
        client.pods.handle(ref).unpause()
        return [ref]

    for_each(pods, one)


@click.command("events")
@click.option("--since", help="Also show events since a time or a duration ago.")
@click.option("--until", help="Stop at a time or a duration from now ('0s': now).")
def events(since: str | None, until: str | None) -> None:
    """Stream pod events (create, start, running, pause, unpause, restart, exec, die, fail, destroy) and hyperd's
    own (daemon kernel-switch)."""
    end = None
    if until:  # a duration counts forward from now
        end = 2 * time.time() - parse_time(until) if until[-1:] in "smhd" else parse_time(until)
    # hyperd ending the stream (a token revoked while it ran) is raised
    for ev in Client().events(since=parse_time(since) if since else None, until=end):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ev["time"]))
        extra = ", ".join(f"{k}={' '.join(f'{n}:{t}s' for n, t in v.items()) if isinstance(v, dict) else v}"
                          for k, v in ev.items() if k not in ("time", "type", "action", "id"))
        click.echo(f"{stamp} {ev.get('type', 'pod')} {ev['action']} {ev['id'][:12]} ({extra})")


COMMANDS = [ps, rm, logs, inspect, port, stop, kill, pause, unpause, events, wait, start, restart, rename]
