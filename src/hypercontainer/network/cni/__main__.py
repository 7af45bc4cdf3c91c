"""`python -m hypercontainer.network.cni install [--conf-dir DIR] [--force] [--by-name]`: the default network
configuration into DIR (/etc/cni/net.d) unless DIR already holds one (with --by-name: unless it holds a network named
`hypercontainer`, whatever else is there; what `make cni` runs, for hyperd's CRI picks its network by name); `show`
prints it; `check [--conf-dir DIR] [--plugin-dir DIR...] [--network NAME]` loads DIR's configuration (the first valid
one, or the network NAME) and asks its plugins whether they are ready (VERSION/STATUS)."""

from __future__ import annotations

import argparse
import sys

from ...errors import HCError
from . import DEFAULT_CONF_DIR, DEFAULT_PLUGIN_DIRS, default, default_text, install_default, load, status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hypercontainer.network.cni")
    sub = ap.add_subparsers(dest="cmd", required=True)
    inst = sub.add_parser("install", help="write the default conflist if the directory holds no configuration")
    inst.add_argument("--conf-dir", default=str(DEFAULT_CONF_DIR))
    inst.add_argument("--force", action="store_true", help="write it even if other configurations are there")
    inst.add_argument("--by-name", action="store_true",
                      help="write it unless a network of its name (hypercontainer) is there; others do not count")
    sub.add_parser("show", help="print the default conflist")
    chk = sub.add_parser("check", help="load the directory's network and ask its plugins (VERSION, STATUS)")
    chk.add_argument("--conf-dir", default=str(DEFAULT_CONF_DIR))
    chk.add_argument("--plugin-dir", action="append", default=None)
    chk.add_argument("--network", default=None, help="the network of that name (default: the first valid one)")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "show":
            sys.stdout.write(default_text())
        elif a.cmd == "install":
            path = install_default(a.conf_dir, force=a.force, by_name=a.by_name)
            what = f"a CNI network named {default().name!r}" if a.by_name else "a CNI configuration"
            print(f"installed {path}" if path else f"{a.conf_dir} already has {what}: left as it is")
        else:
            conf = load(a.conf_dir, a.network)
            status(conf, a.plugin_dir or DEFAULT_PLUGIN_DIRS)
            print(f"{conf.source}: network {conf.name} ({conf.cni_version}): {', '.join(conf.types)}: ready")
    except HCError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
