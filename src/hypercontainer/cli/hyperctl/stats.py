"""hyperctl stats: live CPU, memory, network and block I/O of running pods' containers, as docker stats.

hyperd gives raw counters (GET /v1/pods/{ref}/stats, GET /v1/stats: daemon/api_stats.py); the rates are computed
here, from two readings."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from ..client import Client
from .formats import check_template, render, template_of
from .images import human

# stats --format's fields ({{.Field}}) and their table headers (docker's, with the pod's name)
FIELDS = {"ID": "POD ID", "Pod": "POD", "Container": "CONTAINER", "Name": "NAME", "CPUPerc": "CPU %",
          "MemUsage": "MEM USAGE / LIMIT", "MemPerc": "MEM %", "NetIO": "NET I/O", "BlockIO": "BLOCK I/O",
          "PIDs": "PIDS"}
TABLE = ("ID", "Pod", "Container", "CPUPerc", "MemUsage", "MemPerc", "NetIO", "BlockIO", "PIDs")
INTERVAL = 1.0  # seconds between readings: the live table's refresh
FIRST = 0.5  # seconds between the first two readings (--no-stream's CPU %)
Key = tuple[str, str]  # (pod id, container name)


def binary(n: float) -> str:
    """docker's memory sizes: 1024-based."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.4g}{unit}"
        n /= 1024
    return f"{n:.4g}TiB"


decimal = human  # docker's I/O sizes: 1000-based, as image sizes


def fields_of(pod: dict[str, Any], c: dict[str, Any], before: dict[str, Any] | None) -> dict[str, str]:
    """One row: container `c` of `pod` now, its CPU % from its reading `before` (none: 0)."""
    cpu = 0.0
    if before is not None and c["timestamp"] > before["timestamp"] and c["cpu_ns"] >= before["cpu_ns"]:
        cpu = 100.0 * (c["cpu_ns"] - before["cpu_ns"]) / (c["timestamp"] - before["timestamp"])
    used, limit = c["mem_working_set"], c["memory_limit"]
    net, blk = pod.get("network"), pod.get("block_io")
    return {"ID": pod["id"][:12], "Pod": pod["name"], "Container": c["name"], "Name": f"{pod['name']}/{c['name']}",
            "CPUPerc": f"{cpu:.2f}%", "MemUsage": f"{binary(used)} / {binary(limit)}",
            "MemPerc": f"{100.0 * used / limit:.2f}%" if limit else "--",
            "NetIO": f"{decimal(net['rx_bytes'])} / {decimal(net['tx_bytes'])}" if net else "--",
            "BlockIO": f"{decimal(blk['read_bytes'])} / {decimal(blk['write_bytes'])}" if blk else "--",
            "PIDs": str(c["pids"])}


def rows(now: list[dict[str, Any]], before: dict[Key, dict[str, Any]]) -> list[dict[str, str]]:
    return [fields_of(p, c, before.get((p["id"], c["name"]))) for p in now for c in p["containers"]]


def readings(pods: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    return {(p["id"], c["name"]): c for p in pods for c in p["containers"]}


def table(data: list[dict[str, str]], template: str | None) -> Any:
    """The rows as a rich renderable: the default columns, or a 'table TEMPLATE''s (tab-separated) columns."""
    from rich.table import Table

    t = Table(box=None, pad_edge=False, header_style="bold")
    if template:
        cells = [ln.split("\t") for ln in [render(template, FIELDS)] + [render(template, r) for r in data]]
        for h in cells[0]:
            t.add_column(h, no_wrap=True)
        for row in cells[1:]:
            t.add_row(*row)
        return t
    for col in TABLE:
        t.add_column(FIELDS[col], no_wrap=True)
    for r in data:
        t.add_row(*(r[col] for col in TABLE))
    return t


@click.command("stats")
@click.option("--no-stream", is_flag=True, help="Print one reading and exit (default: a live table, until Ctrl-C).")
@click.option("--format", "fmt", metavar="FORMAT",
              help="table (default), json (one object a line), or a template of {{.Field}}s (\\t: a tab; "
                   "'table TEMPLATE': aligned, with headers): ID, Pod, Container, Name, CPUPerc, MemUsage, MemPerc, "
                   "NetIO, BlockIO, PIDs.")
@click.argument("pods", nargs=-1)
def stats(no_stream: bool, fmt: str | None, pods: tuple[str, ...]) -> None:
    """Show running pods' containers' CPU, memory, network and block I/O and processes (no POD: every running pod
    of yours). CPU % is of one CPU (a VM's vCPUs: up to vcpu x 100%); memory is the working set, against the
    container's own limit or its VM's size; network and block I/O are the VM's, as the host counts them."""
    template = template_of(fmt)
    if template not in ("", "table", "json"):
        check_template(template.removeprefix("table "), FIELDS)
    client = Client()

    def read() -> list[dict[str, Any]]:
        if pods:
            return [client.request("GET", f"/v1/pods/{ref}/stats") for ref in pods]
        return list(client.request("GET", "/v1/stats"))

    def lines(data: list[dict[str, str]]) -> list[str]:
        if template == "json":
            return [json.dumps(r) for r in data]
        return [render(template, r) for r in data]

    tabular = template in ("", "table") or template.startswith("table ")
    layout = template.removeprefix("table ") if template.startswith("table ") else None
    if no_stream:
        before = readings(read())
        time.sleep(FIRST)
        data = rows(read(), before)
        if tabular:
            from rich.console import Console

            Console(width=250).print(table(data, layout))
        else:
            for ln in lines(data):
                click.echo(ln)
        return
    try:
        before = readings(read())
        time.sleep(FIRST)
        now = read()
        if tabular:
            from rich.console import Console
            from rich.live import Live

            with Live(table(rows(now, before), layout), console=Console(), auto_refresh=False) as live:
                while True:
                    time.sleep(INTERVAL)
                    before, now = readings(now), read()
                    live.update(table(rows(now, before), layout), refresh=True)
        while True:
            for ln in lines(rows(now, before)):
                click.echo(ln)
            time.sleep(INTERVAL)
            before, now = readings(now), read()
    except KeyboardInterrupt:  # Ctrl-C: the end of a live view, not a failure
        return

COMMANDS = [stats]
