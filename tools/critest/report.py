"""critest's results: per-spec outcomes from ginkgo's JSON report, one tally line per runtime, and the specs that
passed with runc but not with runv (`make critest`), or with containerd+runc but not with hyperd (`make
cri-conformance`, with the first warning or error hyperd logged during each such spec)."""

from __future__ import annotations

import datetime
import json
import re
import time
from pathlib import Path

FAILED = {"failed", "panicked", "timedout", "interrupted", "aborted"}


def spec_name(s: dict) -> str:
    return " ".join([*(s.get("ContainerHierarchyTexts") or []), s.get("LeafNodeText", "")]).strip()


def first_line(text: str) -> str:
    return next((line.strip() for line in (text or "").splitlines() if line.strip()), "")


TYPE_MARKER = re.compile(r"^<[^<>]*>:?\s*")  # gomega's "<*status.Error | 0x1234>: " before a value


def error_line(text: str) -> str:
    """The first error line of a failure, gomega's framing dropped: "failed to pull image: rpc error: ...",
    "Expected <value> to equal <value>" (at most four lines joined), not "Unexpected error:" alone."""
    parts: list[str] = []
    unexpected = -1  # how many parts came before "Unexpected error:"
    for line in (text or "").splitlines():
        line = line.strip()
        if not line:
            continue
        if line == "Unexpected error:":
            unexpected = len(parts)
            continue
        if line.startswith("{") or (parts and line.startswith(("s: ", "Code: "))):
            break  # the error value's dump
        line = TYPE_MARKER.sub("", line)
        if line:
            parts.append(line)
        if len(parts) > unexpected >= 0 or len(parts) >= 4:
            break
    return (": " if unexpected >= 0 else " ").join(parts)[:400] or first_line(text)


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
                "error": error_line(failure.get("Message", "")),
                "location": f"{Path(loc['FileName']).name}:{loc.get('LineNumber')}" if loc.get("FileName") else "",
            }
            if state in FAILED:  # when it ran: to find what the runtime logged meanwhile
                specs[spec_name(s)].update(start=s.get("StartTime", ""), end=s.get("EndTime", ""))
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


# ---- make cri-conformance: hyperd against containerd+runc -------------------------------------------------------
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (WARNING|ERROR|CRITICAL) (.*)$")


def _local(ts: str) -> datetime.datetime | None:
    """A ginkgo time (RFC 3339, nanoseconds) as a naive local time, like the timestamps in hyperd's log."""
    m = re.match(r"^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", ts or "")
    if not m:
        return None
    frac = (m.group(2) or "0")[:6].ljust(6, "0")
    t = datetime.datetime.fromisoformat(f"{m.group(1)}.{frac}{'+00:00' if m.group(3) == 'Z' else m.group(3)}")
    return t.astimezone().replace(tzinfo=None)


def add_log_hints(res: dict, runtime_log: Path, slack: float = 0.0) -> None:
    """To each failed spec, the first WARNING/ERROR line the runtime (hyperd) logged while it ran ("log") and how
    many there were ("log_count")."""
    if not runtime_log.exists():
        return
    lines = []
    for text in runtime_log.read_text(errors="replace").splitlines():
        m = LOG_LINE.match(text)
        if m:
            t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
            lines.append((t, f"{m.group(2)} {m.group(3)}"))
    pad = datetime.timedelta(seconds=slack)
    for spec in res["specs"].values():
        start, end = _local(spec.get("start", "")), _local(spec.get("end", ""))
        if spec["state"] not in FAILED or not start or not end:
            continue
        hits = [text for t, text in lines if start - pad <= t <= end + pad]
        if hits:
            spec["log"], spec["log_count"] = hits[0][:300], len(hits)


def tally_text(r: dict) -> str:
    return f"{r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped"


def restricted(r: dict, to: dict) -> dict:
    """r as if it had run only the specs that `to` ran (a full reference run beside a focused one): the others
    count as not run."""
    specs = {k: v if to["specs"].get(k, {}).get("state", "not run") != "not run" else {**v, "state": "not run"}
             for k, v in r["specs"].items()}
    return {**r, **tally(specs), "specs": specs}


def conformance_regressions(refs: list[dict], other: dict) -> list[dict]:
    """Specs that passed with one of the reference's results and ran but did not pass on the runtime under test."""
    out = []
    passed = {name for ref in refs for name, s in ref["specs"].items() if s["state"] == "passed"}
    for name in sorted(passed):
        o = other["specs"].get(name)
        if o and o["state"] not in ("passed", "not run"):
            out.append({"spec": name, "state": o["state"], "error": o["error"], "location": o["location"],
                        "log": o.get("log", ""), "log_count": o.get("log_count", 0)})
    return out


def conformance_summary(out: Path, passes: list[tuple[str, dict, dict | None, list[dict], str]],
                        runtime_name: str, ref_name: str) -> dict:
    """Prints one `critest: N passed, M failed, K skipped` line per pass of the runtime under test, the reference's
    tally (with the same flags) beside it, then the specs that passed with the reference but not with the runtime
    (`baseline`: the reference results that count, `why` says which; a spec listed for an earlier pass is not
    listed again). Returns the summary (written by the caller)."""
    summary: dict = {"passes": {}}
    print()
    width = max(len(tally_text(p[1])) for p in passes) if passes else 0
    which = {p[0]: f"{runtime_name}, {p[0]} pass, {p[1]['seconds']:.0f} s" for p in passes}
    width2 = max(map(len, which.values())) if which else 0
    for title, r, ref, _, _ in passes:
        text = f"critest: {tally_text(r).ljust(width)}  {which[title].ljust(width2)}"
        if not r["specs"]:
            text += f" (no report: critest exited {r['exit_code']}; see {r['log']})"
        if ref:
            same = (ref["focus"], ref["skip"]) == (r["focus"], r["skip"])
            shown = ref if same or not r["specs"] else restricted(ref, r)
            when = f"cached from {ref['date']}" if ref.get("cached") else f"{ref['seconds']:.0f} s"
            text += f"  | {ref_name}: {tally_text(shown)} ({when})"
        print(text.rstrip())
    listed: set[str] = set()
    for title, r, ref, baseline, why in passes:
        entry: dict = {"result": str(Path(r["log"]).parent / "result.json"), "tally": tally_text(r),
                       "leftovers": r.get("leftovers", [])}
        if r.get("leftovers"):
            print(f"warning: {runtime_name} ({title} pass) left behind after its own cleanup (removed since): "
                  + "; ".join(r["leftovers"]))
        if ref:
            entry.update(reference=str(Path(ref["log"]).parent / "result.json"), reference_tally=tally_text(ref))
        if baseline:
            regs = conformance_regressions(baseline, r)
            entry.update(baseline=[str(Path(b["log"]).parent / "result.json") for b in baseline],
                         **{f"passed_with_{ref_name}_not_{runtime_name}": regs})
            new = [x for x in regs if x["spec"] not in listed]
            again = len(regs) - len(new)
            besides = f", {again} of them listed above" if again else ""
            print(f"{len(regs)} spec(s) pass with {ref_name}{why} but not with {runtime_name} ({title} pass"
                  f"{besides}){':' if new else ''}")
            for x in new:
                print(f"  {x['spec']}\n      {x['state']}: {x['error'][:200]}")
                if x["log"]:
                    more = f" (+{x['log_count'] - 1} more)" if x["log_count"] > 1 else ""
                    print(f"      {runtime_name}: {x['log'][:200]}{more}")
                listed.add(x["spec"])
        summary["passes"][title] = entry
    return summary
