"""The shared runner: `python -m fuzz.run TARGET [libFuzzer flags] [corpus dirs or files]`.

Each target is a module fuzz/TARGET.py with `test_one(data: bytes) -> None`: it feeds `data` to the real parser
and lets through only the parser's documented errors; anything else escapes and is a crash. The module imports
what it tests inside `atheris.instrument_imports()` so that libFuzzer sees Python's coverage of it.
"""

from __future__ import annotations

import importlib
import sys

TARGETS = ("codec", "agent_client", "unpack", "pod_spec", "kube", "auth", "registry", "archive")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m fuzz.run {{{','.join(TARGETS)}}} [libFuzzer flags] [corpus ...]")
    import atheris

    target = importlib.import_module(f"fuzz.{sys.argv[1]}")
    atheris.Setup([f"fuzz-{sys.argv[1]}", *sys.argv[2:]], target.test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
