"""hyperctl images, load, rmi."""

from __future__ import annotations

from pathlib import Path

import click

from ..client import Client


def human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n:.3g}TB"


@click.command("images")
@click.option("-q", "--quiet", is_flag=True, help="Only print image ids.")
def images(quiet: bool) -> None:
    """List images."""
    rows = Client().request("GET", "/v1/images")
    if quiet:
        for img in rows:
            click.echo(img["id"][7:19])
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"):
        t.add_column(col, no_wrap=True)
    for img in rows:
        for ref in img["refs"] or ["<none>:<none>"]:
            repo, _, tag = ref.rpartition(":")
            t.add_row(repo, tag, img["id"][7:19], img["created"][:19].replace("T", " "), human(img["size"]))
    Console(width=200).print(t)


@click.command("load")
@click.option("-i", "--input", "path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A docker-archive or OCI-archive tarball.")
def load(path: Path) -> None:
    """Load images from an archive."""
    for img in Client(timeout=None).upload("/v1/images/load", path)["loaded"]:
        for ref in img["refs"] or [img["id"]]:
            click.echo(f"Loaded image: {ref}")


@click.command("rmi")
@click.argument("images_", metavar="IMAGE...", nargs=-1, required=True)
def rmi(images_: tuple[str, ...]) -> None:
    """Remove images."""
    client = Client()
    for ref in images_:
        for line in client.request("DELETE", f"/v1/images/{ref}")["removed"]:
            click.echo(line)


COMMANDS = [images, load, rmi]
