"""runv's entry point. The verbs an engine calls for every container (create, start, state, kill, delete), given as
engines give them (runc's grammar: global options, the verb, its flags, the id), run without importing click,
whose import is ~20 ms of each call. Anything else (other verbs, --help, an option or an argument count this
parser does not know) goes to the full command line (main.py), which also reports what is wrong with it."""

from __future__ import annotations

import sys
from pathlib import Path

GLOBAL_VALUES = ("--root", "--log", "--log-format", "--rootless", "--criu")
GLOBAL_FLAGS = ("--debug", "--systemd-cgroup")
# the options with a value a verb takes: option -> its name
VALUES = {"create": {"-b": "bundle", "--bundle": "bundle", "--pid-file": "pid-file",
                     "--console-socket": "console-socket", "--preserve-fds": "preserve-fds"}}
# verb: (its flags and what they set, the least and the most arguments)
VERBS: dict[str, tuple[dict[str, str], int, int]] = {
    "create": ({"--no-pivot": "no-pivot", "--no-new-keyring": "no-new-keyring"}, 1, 1),
    "start": ({}, 1, 1),
    "state": ({}, 1, 1),
    "kill": ({"-a": "all", "--all": "all"}, 1, 2),
    "delete": ({"-f": "force", "--force": "force"}, 1, 1),
}


def parse(argv: list[str]) -> tuple[dict[str, str], str, set[str], list[str]] | None:
    """(options (global ones and the verb's), verb, flags, arguments), or None: not a hot verb as engines call it."""
    opts = {"--root": "/run/runv", "--log": "", "--log-format": "text"}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        name, eq, value = argv[i].partition("=")
        if name in GLOBAL_VALUES:
            if not eq:
                i += 1
                if i == len(argv):
                    return None
                value = argv[i]
            opts[name] = value
        elif argv[i] not in GLOBAL_FLAGS:
            return None
        i += 1
    if i == len(argv) or argv[i] not in VERBS or opts["--log-format"] not in ("text", "json") \
            or not opts["--root"] or "--log" in (opts["--root"], opts["--log"]):
        return None
    verb = argv[i]
    known, least, most = VERBS[verb]
    values = VALUES.get(verb, {})
    flags: set[str] = set()
    args: list[str] = []
    rest = argv[i + 1:]
    while rest:
        a = rest.pop(0)
        name, eq, value = a.partition("=")
        if a in known:
            flags.add(known[a])
        elif name in values:
            if not eq:
                if not rest or not rest[0]:
                    return None
                value = rest.pop(0)
            if not value:
                return None
            opts[values[name]] = value
        elif a.startswith("-") or not a:
            return None
        else:
            args.append(a)
    if not opts.get("preserve-fds", "0").isdigit():
        return None
    return (opts, verb, flags, args) if least <= len(args) <= most else None


def main() -> None:
    parsed = parse(sys.argv[1:])
    if parsed is None:
        from .main import main as full

        full()
        return
    from .. import leave_after

    leave_after(lambda: run(*parsed))


def run(opts: dict[str, str], verb: str, flags: set[str], args: list[str]) -> None:
    """One hot verb; our errors as main.py reports them (stderr, --log, exit status 1)."""
    from ...errors import HCError
    from . import verbs

    rt = verbs.Runtime(Path(opts["--root"]), Path(opts["--log"]) if opts["--log"] else None, opts["--log-format"],
                       False)
    try:
        if verb == "create":
            path = {k: Path(opts[k]) if k in opts else None for k in ("pid-file", "console-socket")}
            verbs.create(rt, Path(opts.get("bundle", ".")), path["pid-file"], path["console-socket"],
                         int(opts.get("preserve-fds", "0")), args[0])
        elif verb == "start":
            verbs.start(rt, args[0])
        elif verb == "state":
            print(verbs.state(rt, args[0]))
        elif verb == "kill":
            verbs.kill(rt, "all" in flags, args[0], args[1] if len(args) > 1 else "SIGTERM")
        else:
            verbs.delete(rt, "force" in flags, args[0])
    except HCError as e:
        verbs.log_error(e.message)
        print(f"runv: {e.message}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
