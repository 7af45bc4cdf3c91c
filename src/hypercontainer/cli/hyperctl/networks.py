"""hyperctl network create | ls | rm | inspect: your named networks (a bridge and subnet each, isolated from
everyone else's; network/networks.py). A pod joins one with `run --net NAME`."""

from __future__ import annotations

import click

from ..client import Client, dumps


@click.group("network")
def network() -> None:
    """Manage your networks (each its own bridge and subnet; pods join one with run --net NAME)."""


@network.command("create")
@click.argument("name")
def create(name: str) -> None:
    """Create a network."""
    out = Client().request("POST", "/v1/networks", json={"name": name})
    click.echo(f"{out['name']} {out['subnet']}")


@network.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only print names.")
def ls(quiet: bool) -> None:
    """List your networks."""
    rows = Client().request("GET", "/v1/networks")
    if quiet:
        for n in rows:
            click.echo(n["name"])
        return
    fmt = "{:<24} {:<10} {:<18} {:>4}"
    click.echo(fmt.format("NAME", "BRIDGE", "SUBNET", "PODS"))
    for n in rows:
        click.echo(fmt.format(n["name"], n["bridge"], n["subnet"], n["pods"]))


@network.command("inspect")
@click.argument("names", nargs=-1, required=True)
def inspect(names: tuple[str, ...]) -> None:
    """Show networks as JSON."""
    rows = {n["name"]: n for n in Client().request("GET", "/v1/networks")}
    missing = [n for n in names if n not in rows]
    if missing:
        raise click.ClickException(f"no such network: {', '.join(missing)}")
    click.echo(dumps([rows[n] for n in names]))


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
def rm(names: tuple[str, ...]) -> None:
    """Remove networks (refused while a pod is on one)."""
    client = Client()
    for name in names:
        client.request("DELETE", f"/v1/networks/{name}")
        click.echo(name)


COMMANDS = [network]
