"""hyperctl volume create | ls | inspect | rm: your named volumes (an ext4 image each, attached to a pod's VM as a
virtio disk with `run -v NAME:/path`; storage/named_volumes.py)."""

from __future__ import annotations

import click

from ..client import Client, dumps


@click.group("volume")
def volume() -> None:
    """Manage your volumes (each a disk of its own; pods mount one with run -v NAME:/path)."""


@volume.command("create")
@click.argument("name")
@click.option("--size", default="1G", show_default=True, help="Its size: 512M, 10G, ...")
def create(name: str, size: str) -> None:
    """Create a volume."""
    click.echo(Client().request("POST", "/v1/volumes", json={"name": name, "size": size})["name"])


@volume.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only print names.")
def ls(quiet: bool) -> None:
    """List your volumes."""
    rows = Client().request("GET", "/v1/volumes")
    if quiet:
        for v in rows:
            click.echo(v["name"])
        return
    fmt = "{:<32} {:>10}"
    click.echo(fmt.format("NAME", "SIZE"))
    for v in rows:
        click.echo(fmt.format(v["name"], f"{v['size'] >> 20}M"))


@volume.command("inspect")
@click.argument("names", nargs=-1, required=True)
def inspect(names: tuple[str, ...]) -> None:
    """Show volumes as JSON."""
    client = Client()
    click.echo(dumps([client.request("GET", f"/v1/volumes/{n}") for n in names]))


@volume.command("rm")
@click.argument("names", nargs=-1, required=True)
def rm(names: tuple[str, ...]) -> None:
    """Remove volumes (refused while a pod uses one)."""
    client = Client()
    for name in names:
        client.request("DELETE", f"/v1/volumes/{name}")
        click.echo(name)


COMMANDS = [volume]
