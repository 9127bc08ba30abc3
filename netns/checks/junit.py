"""A run's report as JUnit XML, the format CI systems read (pure).

One ``<testsuite>`` per run (the scenario), one ``<testcase>`` per check (its
index and name, ``classname`` = ``lab.SCENARIO``, its time), with a ``<failure>``
carrying the check's summary when it failed, and ``<system-out>`` holding its
summary and figures as JSON; each event that failed is a failing test case too.
The suite's properties say the lab, the gateway and the phase times.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from netns.checks.report import RunReport


def to_junit(report: RunReport) -> str:
    failed_events = [e for e in report.events if not e.ok]
    failures = sum(1 for r in report.results if not r.ok) + len(failed_events)
    total_time = sum(r.elapsed_s for r in report.results)
    suite = ET.Element("testsuite", name=f"lab {report.scenario}",
                       tests=str(len(report.results) + len(failed_events)),
                       failures=str(failures), errors="0", skipped="0",
                       time=f"{total_time:.3f}")
    props = ET.SubElement(suite, "properties")
    for name, value in (("lab", report.lab), ("scenario", report.path),
                        ("gateway", report.gateway), ("sites", str(report.sites)),
                        ("hosts", str(report.hosts)),
                        *((f"{k}", f"{v:.3f}") for k, v in report.timings.items())):
        ET.SubElement(props, "property", name=name, value=value)
    classname = f"lab.{report.scenario}"
    for r in report.results:
        case = ET.SubElement(suite, "testcase", classname=classname,
                             name=f"check[{r.index}] {r.name}", time=f"{r.elapsed_s:.3f}")
        if not r.ok:
            failure = ET.SubElement(case, "failure", message=r.summary, type=r.kind)
            failure.text = r.summary
        out = ET.SubElement(case, "system-out")
        out.text = r.summary + "\n" + json.dumps(r.numbers, indent=1, ensure_ascii=False)
    for e in failed_events:
        case = ET.SubElement(suite, "testcase", classname=classname,
                             name=f"event[{e.index}] {e.name}", time="0")
        failure = ET.SubElement(case, "failure", message=e.summary, type=e.kind)
        failure.text = e.summary
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(
        suite, encoding="unicode") + "\n"
