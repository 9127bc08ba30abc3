"""Run a scenario's checks with its events: the timeline first, then the checks in order.

Flow of ``run_all``:
 1. the timeline (when the scenario has timed events or checks with ``at``):
    t = 0 now; one task applies the timed events in time order, each when due
    (``trio.sleep_until``; an event applied late says so), and one task per
    timeline check starts it at its time (a ``recovers`` check waits for its
    event); the phase ends when every event is applied and every check is done,
    each check bounded by its own timeout;
 2. the sequential checks (no ``at``) in file order, and after check N every
    event with ``after_check = N``;
 3. the results in check order, and the events in the order they ran.

An event that fails is a failed row of the report; the run goes on.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import trio

from netns.checks import kinds
from netns.checks.report import CheckResult, EventResult
from netns.checks.streams import Timeline
from netns.describe.scenario import Check
from netns.describe.timeline import Event, run_order
from netns.realise.faults import FaultError, Faults


class Lab(kinds.Lab, Protocol):
    timeline: Timeline | None
    faults: Faults
    on_failure: Callable[[CheckResult], Awaitable[None]] | None

    def say(self, line: str) -> None: ...


async def apply_event(lab: Lab, event: Event, clock: Timeline | None) -> EventResult:
    """Apply one event; its result (failures are results too)."""
    lab.say(f"event {event.name} …")
    started = time.time()
    try:
        summary = await lab.faults.apply(event)
        ok = True
    except FaultError as e:
        summary, ok = str(e), False
    applied = clock.at(started) if clock is not None else None
    if clock is not None:
        clock.fire(event.index, started)
        if event.at is not None and applied is not None and applied - event.at > 0.5:
            summary += f" (applied {applied - event.at:.2f} s late)"
    lab.say(f"event {event.name} … {'ok' if ok else 'FAIL'} {summary}")
    return EventResult(event.index, event.name, event.kind, event.at, applied, ok, summary)


async def run_timeline(lab: Lab, checks: Sequence[Check], events: Sequence[Event]
                       ) -> tuple[list[CheckResult], list[EventResult]]:
    """Flow step 1."""
    clock = Timeline(t0_wall=time.time(), t0=trio.current_time())
    lab.timeline = clock
    results: list[CheckResult] = []
    ran: list[EventResult] = []
    lab.say(f"timeline: {len(events)} events, {len(checks)} checks")

    async def events_task() -> None:
        for event in run_order(events):
            await trio.sleep_until(clock.t0 + (event.at or 0.0))
            ran.append(await apply_event(lab, event, clock))

    async def check_task(check: Check) -> None:
        if check.kind == "recovers":  # its timeout runs from its event
            await clock.wait(check.params["event"])
        else:
            await trio.sleep_until(clock.t0 + (check.at or 0.0))
        result = await kinds.run_check(lab, check)
        results.append(result)
        lab.say(f"check {check.name} … {'ok' if result.ok else 'FAIL'} {result.summary}")
        if not result.ok and lab.on_failure is not None:
            await lab.on_failure(result)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(events_task)
        for check in checks:
            nursery.start_soon(check_task, check)
    return results, ran


async def run_all(lab: Lab, checks: Sequence[Check], events: Sequence[Event]
                  ) -> tuple[list[CheckResult], list[EventResult]]:
    """The whole flow (module doc); results in check order, events in the order they ran."""
    on_timeline = [c for c in checks if c.at is not None]
    timed = [e for e in events if e.at is not None]
    results: list[CheckResult] = []
    ran: list[EventResult] = []
    if on_timeline or timed:
        results, ran = await run_timeline(lab, on_timeline, timed)
    between: dict[int, list[Event]] = {}
    for e in run_order(events):
        if e.after_check is not None:
            between.setdefault(e.after_check, []).append(e)
    for check in checks:
        if check.at is not None:
            continue
        lab.say(f"check {check.name} …")
        result = await kinds.run_check(lab, check)
        lab.say(f"check {check.name} … {'ok' if result.ok else 'FAIL'} {result.summary} "
                f"({result.elapsed_s:.2f} s)")
        results.append(result)
        if not result.ok and lab.on_failure is not None:
            await lab.on_failure(result)
        for event in between.get(check.index, []):
            ran.append(await apply_event(lab, event, lab.timeline))
    return sorted(results, key=lambda r: r.index), ran


__all__ = ["apply_event", "run_all", "run_timeline"]
