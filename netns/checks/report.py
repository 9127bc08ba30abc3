"""The result of a lab run: a table readable at a glance, or JSON for machines (pure).

The table has one row per check (its summary cut at ``SUMMARY_MAX`` characters, so
a 12-site run stays one screen), then the full text of every failed check whose
summary was cut, then the verdict with the phase times.  The JSON document carries
the same facts: every check's full summary and its ``numbers``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

SUMMARY_MAX = 90


@dataclass(frozen=True)
class CheckResult:
    index: int
    name: str
    kind: str
    ok: bool
    summary: str
    elapsed_s: float
    numbers: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "kind": self.kind,
            "ok": self.ok,
            "summary": self.summary,
            "elapsed_s": round(self.elapsed_s, 3),
            "numbers": self.numbers,
        }


@dataclass(frozen=True)
class RunReport:
    lab: str
    scenario: str
    path: str
    gateway: str
    sites: int
    hosts: int
    results: tuple[CheckResult, ...]
    timings: dict[str, float] = field(default_factory=dict)
    events: tuple[EventResult, ...] = ()  # a timeline's events, in the order they ran

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results) and all(e.ok for e in self.events)

    @property
    def passed(self) -> int:
        return sum(1 for r in self.results if r.ok)


def columns(table: Sequence[Sequence[str]]) -> list[str]:
    """Rows as left-aligned text columns, a dashed rule under the first (header) row."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    out = []
    for n, row in enumerate(table):
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def format_table(report: RunReport) -> str:
    """A fixed-width table: one row per check, then a verdict line."""
    head = (f"{report.scenario} — lab {report.lab}, {report.sites} sites, {report.hosts} hosts, "
            f"gateway {report.gateway}")
    rows = [("#", "check", "result", "time", "details")]
    for r in report.results:
        summary = r.summary if len(r.summary) <= SUMMARY_MAX else r.summary[:SUMMARY_MAX - 1] + "…"
        rows.append((str(r.index), r.name, "ok" if r.ok else "FAIL", f"{r.elapsed_s:.2f}s",
                     summary))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [head, ""]
    for n, row in enumerate(rows):
        cells = [row[i].ljust(widths[i]) for i in range(4)] + [row[4]]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 7)
    if report.events:
        lines += ["", "events:"]
        for e in report.events:
            when = (f"t = {e.applied_s:.2f} s" if e.applied_s is not None
                    else "between checks")
            lines.append(f"  e{e.index}  {'ok' if e.ok else 'FAIL'}  {when}  {e.name}: "
                         f"{e.summary}")
    cut = [r for r in report.results if not r.ok and len(r.summary) > SUMMARY_MAX]
    if cut:
        lines += ["", "failed checks in full:"]
        lines += [f"  {r.index} {r.name}: {r.summary}" for r in cut]
    timing = ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in report.timings.items())
    verdict = "PASS" if report.ok else "FAIL"
    failed_events = sum(1 for e in report.events if not e.ok)
    lines += ["", f"{verdict}: {report.passed}/{len(report.results)} checks passed"
              + (f", {failed_events} events failed" if failed_events else "")
              + (f" ({timing})" if timing else "")]
    return "\n".join(lines) + "\n"


def to_json(report: RunReport) -> str:
    doc: dict[str, Any] = {
        "lab": report.lab,
        "scenario": report.scenario,
        "path": report.path,
        "gateway": report.gateway,
        "sites": report.sites,
        "hosts": report.hosts,
        "ok": report.ok,
        "passed": report.passed,
        "total": len(report.results),
        "timings_s": {k.removesuffix("_s"): round(v, 3) for k, v in report.timings.items()},
        "checks": [r.as_dict() for r in report.results],
        "events": [e.as_dict() for e in report.events],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def make_report(lab: str, scenario: Any, gateway: str, hosts: int,
                results: Sequence[CheckResult], timings: dict[str, float],
                events: Sequence[EventResult] = ()) -> RunReport:
    return RunReport(lab=lab, scenario=scenario.name, path=scenario.path, gateway=gateway,
                     sites=len(scenario.sites), hosts=hosts, results=tuple(results),
                     timings=dict(timings), events=tuple(events))


@dataclass(frozen=True)
class EventResult:
    """One timeline event as it ran: when it was due, when it was applied, what it did."""

    index: int
    name: str
    kind: str
    at_s: float | None  # due on the timeline (None: between checks)
    applied_s: float | None  # when it was applied, on the timeline
    ok: bool
    summary: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "kind": self.kind, "at_s": self.at_s,
                "applied_s": self.applied_s, "ok": self.ok, "summary": self.summary}
