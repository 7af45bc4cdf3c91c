"""hyperctl info and version."""

from __future__ import annotations

import click

from ... import __version__
from ..client import Client, dumps


def template_text(t: dict) -> str:
    if t.get("building"):
        return f"template {t['key'][:8]} building"
    return f"template {t['key'][:8]}: {t['cpus']} vCPU, {t['memory']} MiB{'' if t.get('nic') else ', no NIC'}"


@click.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def info(as_json: bool) -> None:
    """Show the accelerator, guest kernel, versions and counts."""
    i = Client().request("GET", "/v1/info")
    if as_json:
        click.echo(dumps(i))
        return
    if t := i.get("tenant"):  # a tenant's view: its quotas and what it uses, nothing of the host's
        u = t["usage"]
        click.echo("\n".join([
            f"Server version:   {i['version']} (API {i['api']}, protocol {i['protocol']})",
            f"Accelerator:      {i['accelerator']['name']}",
            f"Tenant:           {t['name']}",
            f"Pods:             {i['pods']['total']} ({i['pods']['running']} running) of {t['max_pods']}",
            f"vCPUs:            {u['vcpus']} of {t['max_vcpus']}",
            f"Memory:           {u['memory']} of {t['max_memory']} MiB",
            f"Volumes:          up to {t['max_volume_gib']} GiB",
            f"Images:           {i['images']}"]))
        return
    lines = [
        f"Server version:   {i['version']} (API {i['api']}, protocol {i['protocol']})",
        f"Accelerator:      {i['accelerator']['name']} ({i['accelerator']['reason']})",
        f"Guest kernel:     {i['guest']['kernel_release']} ({i['guest']['kernel']})",
        f"Guest initrd:     {i['guest']['initrd']}",
        f"Agent build:      {i['guest']['agent']}",
        f"Host kernel:      {i['host_kernel']}",
        f"Python:           {i['python']}",
        f"Network:          {i['network']['mode']} ({i['network']['reason']})",
        f"Boot policy:      {i['boot']['policy']} ({', '.join(map(template_text, i['boot']['templates'])) or 'none'})",
        f"Root dir:         {i['root']}",
        f"CRI endpoint:     {'unix://' + cri if (cri := (i.get('cri') or {}).get('socket')) else 'off (--no-cri)'}",
        f"Pods:             {i['pods']['total']} ({i['pods']['running']} running)",
        f"Images:           {i['images']}",
    ]
    if pool := i["boot"].get("pool"):
        lines.insert(lines.index(next(x for x in lines if x.startswith("Boot policy:"))) + 1,
                     f"Pool:             {pool['ready']} of {pool['size']} VMs ready"
                     + (" (sized by hyperd)" if pool.get("auto") else ""))
    if (build := i["guest"].get("build")) and build["state"] != "built":
        lines.insert(lines.index(next(x for x in lines if x.startswith("Guest kernel:"))) + 1,
                     f"Own kernel:       {build['state']}, {build['progress'] or 'starting'}")
    for t in i.get("recent_boots", [])[:3]:
        lines.append("Recent boot:      " + ", ".join(f"{k} {v:.3f}s" for k, v in t.items()))
    click.echo("\n".join(lines))


@click.command("version")
def version() -> None:
    """Show client and server versions."""
    click.echo(f"Client: hyperctl {__version__}")
    click.echo(f"Server: hyperd {Client().request('GET', '/v1/version')['version']}")


COMMANDS = [info, version]
