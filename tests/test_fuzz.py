"""The short pass of the fuzzers (`make fuzz` is the long one): every target for a bounded number of runs with a
fixed seed, replaying its committed seed corpus (fuzz/corpus/TARGET) and its regression vectors (each crash a
fuzzer ever found, tests/vectors/fuzz/TARGET); new inputs go to a temporary directory, never the committed ones.

Python targets (atheris) run through fuzz/run.py; the guest agent's (libFuzzer, clang with ASan and UBSan) are
built by fuzz/agent/Makefile; the REST API is driven by schemathesis against a hyperd of its own (fuzz/api.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FUZZ = REPO / "fuzz"
VECTORS = REPO / "tests" / "vectors" / "fuzz"
AGENT_OUT = REPO / "build" / "fuzz-agent"

# runs per target: a few seconds each on a slow machine (the seed corpus and the vectors run on top)
PY_RUNS = {"codec": 30000, "agent_client": 3000, "unpack": 1000, "pod_spec": 10000, "kube": 10000, "auth": 1000,
           "registry": 1000, "archive": 600}
AGENT_RUNS = {"proto": 50000, "net": 50000, "security": 50000, "tar": 3000}
AGENT_FLAGS = {"tar": ["-close_fd_mask=2", "-max_len=16384"]}


def _dirs(target: str, tmp_path: Path) -> list[str]:
    new = tmp_path / "new"
    new.mkdir()
    dirs = [new, FUZZ / "corpus" / target]
    if (VECTORS / target).is_dir():
        dirs.append(VECTORS / target)
    return [str(d) for d in dirs]


def _check(r: subprocess.CompletedProcess, target: str) -> None:
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Done " in out, f"{target}: exit {r.returncode}\n{out[-6000:]}"


def test_every_target_is_run() -> None:
    from fuzz.run import TARGETS

    assert set(TARGETS) == set(PY_RUNS)
    assert all((FUZZ / "corpus" / t).is_dir() and any((FUZZ / "corpus" / t).iterdir()) for t in TARGETS)
    agent = {p.stem.removeprefix("fuzz_") for p in (FUZZ / "agent").glob("fuzz_*.c")}
    assert agent == set(AGENT_RUNS)
    assert all(any((FUZZ / "corpus" / f"agent_{t}").iterdir()) for t in agent)
    for d in VECTORS.iterdir():  # a vector belongs to a target that replays it
        assert d.name in PY_RUNS or d.name.removeprefix("agent_") in AGENT_RUNS, d


@pytest.mark.parametrize("target", sorted(PY_RUNS))
def test_python_target(target: str, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONHASHSEED="0", TMPDIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "fuzz.run", target, f"-runs={PY_RUNS[target]}", "-seed=1",
                        "-max_total_time=60", f"-artifact_prefix={tmp_path}/", *_dirs(target, tmp_path)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    _check(r, target)


@pytest.fixture(scope="module")
def agent_fuzzers() -> Path:
    if not shutil.which("clang"):
        pytest.skip("clang is not installed (tools/bootstrap.sh installs it)")
    subprocess.run(["make", "-s", "-C", str(FUZZ / "agent"), f"OUT={AGENT_OUT}", "-j2"], check=True,
                   capture_output=True, timeout=600)
    return AGENT_OUT


@pytest.mark.parametrize("target", sorted(AGENT_RUNS))
def test_agent_target(target: str, agent_fuzzers: Path, tmp_path: Path) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    r = subprocess.run([str(agent_fuzzers / f"fuzz_{target}"), f"-runs={AGENT_RUNS[target]}", "-seed=1",
                        "-max_total_time=60", f"-artifact_prefix={tmp_path}/", *AGENT_FLAGS.get(target, []),
                        *_dirs(f"agent_{target}", tmp_path)],
                       env=env, capture_output=True, text=True, timeout=240)
    _check(r, f"agent_{target}")


def test_api_schemathesis() -> None:
    """No 5xx, no traceback in hyperd's log, nothing left behind (fuzz/api.py says what is left out)."""
    if os.geteuid() != 0:
        pytest.skip("hyperd needs root")
    r = subprocess.run([sys.executable, "-m", "fuzz.api", "--max-examples", "5", "--seed", "1"], cwd=REPO,
                       capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stdout[-8000:] + r.stderr[-4000:]
