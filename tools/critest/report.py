"""critest's results: per-spec outcomes from ginkgo's JSON report, one tally line per runtime, and the specs that
passed with runc but not with runv."""

from __future__ import annotations

import json
import time
from pathlib import Path

FAILED = {"failed", "panicked", "timedout", "interrupted", "aborted"}


def spec_name(s: dict) -> str:
    return " ".join([*(s.get("ContainerHierarchyTexts") or []), s.get("LeafNodeText", "")]).strip()


def first_line(text: str) -> str:
    return next((line.strip() for line in (text or "").splitlines() if line.strip()), "")


def parse(report: Path) -> dict[str, dict]:
    """{spec: {state, seconds, error, location}} for the suite's It nodes. A spec filtered out by a focus or skip
    regex is 'not run'; one that skipped itself (Skip()) is 'skipped', with its reason."""
    specs: dict[str, dict] = {}
    for suite in json.loads(report.read_text()):
        for s in suite.get("SpecReports") or []:
            if s.get("LeafNodeType") != "It":
                continue
            failure = s.get("Failure") or {}
            state = s.get("State", "unknown")
            if state == "skipped" and not failure.get("Message"):
                state = "not run"
            loc = failure.get("Location") or {}
            specs[spec_name(s)] = {
                "state": state, "seconds": round((s.get("RunTime") or 0) / 1e9, 3),
                "error": first_line(failure.get("Message", "")),
                "location": f"{Path(loc['FileName']).name}:{loc.get('LineNumber')}" if loc.get("FileName") else "",
            }
    return specs


def tally(specs: dict[str, dict]) -> dict[str, int]:
    states = [s["state"] for s in specs.values()]
    return {"passed": states.count("passed"), "failed": sum(s in FAILED for s in states),
            "skipped": sum(s in ("skipped", "not run", "pending") for s in states)}


def result(runtime: str, report: Path | None, seconds: float, log: Path, focus: str, skip: str,
           exit_code: int) -> dict:
    specs = parse(report) if report and report.exists() else {}
    return {"runtime": runtime, **tally(specs), "seconds": round(seconds, 1), "exit_code": exit_code,
            "focus": focus, "skip": skip, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "log": str(log),
            "report": str(report) if specs else "", "specs": specs}


def line(r: dict) -> str:
    text = f"critest ({r['runtime']}): {r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped " \
           f"in {r['seconds']:.0f} s"
    if not r["specs"]:
        text += f" (no report: critest exited {r['exit_code']}; see {r['log']})"
    return text


def regressions(runc: dict, runv: dict) -> list[dict]:
    """Specs that passed with runc and ran but did not pass with runv."""
    out = []
    for name, s in sorted(runc["specs"].items()):
        other = runv["specs"].get(name)
        if s["state"] == "passed" and other and other["state"] not in ("passed", "not run"):
            out.append({"spec": name, "runv": other["state"], "error": other["error"],
                        "location": other["location"]})
    return out


def summarize(out: Path, ran: list[str]) -> int:
    """Prints the tally of each runtime run now, then the specs that passed with runc but not with runv (a result
    of an earlier run stands in for a runtime not run now). Writes build/critest/summary.json."""
    results = {}
    for rt in ("runc", "runv"):
        f = out / "results" / rt / "result.json"
        if f.exists():
            results[rt] = json.loads(f.read_text())
    print()
    for rt in ran:
        if rt in results:
            print(line(results[rt]))
    summary: dict = {"runs": results}
    if "runc" in results and "runv" in results:
        regs = regressions(results["runc"], results["runv"])
        summary["passed_with_runc_not_runv"] = regs
        earlier = [rt for rt in ("runc", "runv") if rt not in ran]
        note = ""
        if earlier:
            e = results[earlier[0]]
            focus = f", focus {e['focus']!r}" if e["focus"] else ""
            note = f" (the {earlier[0]} result is from {e['date']}{focus})"
        print(f"{len(regs)} spec(s) passed with runc but not with runv{note}{':' if regs else ''}")
        for r in regs:
            print(f"  {r['spec']}\n      {r['runv']}: {r['error'][:160]}")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"logs and per-spec results: {out}/results/<runtime>/, summary: {out}/summary.json")
    return 0 if all(results[rt]["specs"] for rt in ran if rt in results) else 1
