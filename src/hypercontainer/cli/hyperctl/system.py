"""hyperctl system (df, prune) and completion."""

from __future__ import annotations

import click

from ..client import Client, dumps
from .images import human

SECTIONS = (("images", "Images"), ("pods", "Pods"), ("volumes", "Local Volumes"), ("logs", "Logs"),
            ("layers", "Layers"), ("templates", "Templates"))  # layers and templates: the administrator's only


@click.group("system")
def system() -> None:
    """Manage hyperd's disk use (df, prune)."""


@system.command("df")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def df(fmt: str) -> None:
    """Show the disk space images, layers, pods, volumes, logs and templates take (a tenant: its own)."""
    usage = Client(timeout=None).request("GET", "/v1/system/df")
    if fmt == "json":
        click.echo(dumps(usage))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"):
        t.add_column(col, no_wrap=True)
    for key, title in SECTIONS:
        if key in usage:
            s = usage[key]
            pct = f" ({100 * s['reclaimable'] // s['size']}%)" if s["size"] else ""
            t.add_row(title, str(s["total"]), str(s["active"]), human(s["size"]), human(s["reclaimable"]) + pct)
    Console(width=250).print(t)


@system.command("prune")
@click.option("-a", "--all", "all_", is_flag=True, help="Remove every image no pod uses, not only dangling ones.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
def prune(all_: bool, force: bool) -> None:
    """Remove stopped pods, unused images and unreferenced blobs and layers."""
    if not force:
        images = "all images not used by a pod" if all_ else "all dangling images"
        click.echo(f"WARNING! This will remove:\n  - all stopped pods\n  - {images}\n"
                   "  - every blob and unpacked layer no image uses", err=True)
        if not click.confirm("Are you sure you want to continue?", default=False, err=True):
            return
    r = Client(timeout=None).request("POST", "/v1/system/prune", json={"all": all_})
    for title, key in (("Deleted Pods", "pods"), ("Deleted Images", "images")):
        if r[key]:
            click.echo(f"{title}:")
            for i in r[key]:
                click.echo(i)
            click.echo()
    click.echo(f"Total reclaimed space: {human(r['bytes_freed'])}")


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(hyperctl completion bash)", or save it where the shell
    loads completions (zsh: a file named _hyperctl in $fpath; fish: ~/.config/fish/completions/hyperctl.fish)."""
    from click.shell_completion import get_completion_class

    from . import cli

    cls = get_completion_class(shell)
    assert cls is not None  # the three choices are click's own
    click.echo(cls(cli, {}, "hyperctl", "_HYPERCTL_COMPLETE").source())


COMMANDS = [system, completion]
