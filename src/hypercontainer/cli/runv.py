"""runv: the OCI runtime command line (runc-compatible). Implemented in a later issue; today it reports so."""

from __future__ import annotations

import sys

from .. import __version__


def main() -> None:
    args = sys.argv[1:]
    if args[:1] in (["--version"], ["-v"]):
        print(f"runv version {__version__}\nspec: 1.0.2")
        return
    print("runv: the OCI runtime commands are not implemented yet (see the runv issue)", file=sys.stderr)
    sys.exit(1)
