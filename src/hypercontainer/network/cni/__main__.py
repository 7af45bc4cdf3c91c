"""`python -m hypercontainer.network.cni install [--conf-dir DIR] [--force]`: the default network configuration into
DIR (/etc/cni/net.d) unless DIR already holds one; `show` prints it; `check [--conf-dir DIR] [--plugin-dir DIR...]`
loads DIR's configuration and asks its plugins whether they are ready (VERSION/STATUS)."""

from __future__ import annotations

import argparse
import sys

from ...errors import HCError
from . import DEFAULT_CONF_DIR, DEFAULT_PLUGIN_DIRS, default_text, install_default, load, status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hypercontainer.network.cni")
    sub = ap.add_subparsers(dest="cmd", required=True)
    inst = sub.add_parser("install", help="write the default conflist if the directory holds no configuration")
    inst.add_argument("--conf-dir", default=str(DEFAULT_CONF_DIR))
    inst.add_argument("--force", action="store_true", help="write it even if other configurations are there")
    sub.add_parser("show", help="print the default conflist")
    chk = sub.add_parser("check", help="load the directory's network and ask its plugins (VERSION, STATUS)")
    chk.add_argument("--conf-dir", default=str(DEFAULT_CONF_DIR))
    chk.add_argument("--plugin-dir", action="append", default=None)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "show":
            sys.stdout.write(default_text())
        elif a.cmd == "install":
            path = install_default(a.conf_dir, force=a.force)
            print(f"installed {path}" if path else f"{a.conf_dir} already has a CNI configuration: left as it is")
        else:
            conf = load(a.conf_dir)
            status(conf, a.plugin_dir or DEFAULT_PLUGIN_DIRS)
            print(f"{conf.source}: network {conf.name} ({conf.cni_version}): {', '.join(conf.types)}: ready")
    except HCError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
