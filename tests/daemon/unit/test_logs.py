"""Logs for journald and grep: priorities without timestamps under journald, repeats counted."""

from __future__ import annotations

import io
import logging
import os
import tempfile

import pytest

from l2bridge.io import logs


@pytest.fixture(autouse=True)
def restore_the_logger():
    """setup() configures the process's l2bridge logger: put it back for later tests."""
    logger = logging.getLogger("l2bridge")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers[:] = saved[0]
    logger.propagate, logger.level = saved[1], saved[2]


def logger_into(stream, monkeypatch, journal: bool = False) -> tuple[logging.Logger, list[float]]:
    clock = [0.0]
    if journal:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
    else:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    handler = logs.setup("london", "info", stream=stream)
    for item in handler.filters:
        if isinstance(item, logs.RepeatLimiter):
            item.clock = lambda: clock[0]
    return logging.getLogger("l2bridge"), clock


def test_under_journald_lines_carry_a_priority_and_no_timestamp(monkeypatch) -> None:
    with tempfile.TemporaryFile("w+") as stream:
        log, _ = logger_into(stream, monkeypatch, journal=True)
        log.warning("peer %s is down", "berlin")
        log.info("peer %s is up", "berlin")
        log.error("a\nmultiline problem")
        stream.seek(0)
        assert stream.read().splitlines() == [
            "<4>peer berlin is down", "<6>peer berlin is up", "<3>a multiline problem"]


def test_on_a_terminal_or_file_lines_carry_time_site_and_level(monkeypatch) -> None:
    stream = io.StringIO()
    log, _ = logger_into(stream, monkeypatch)
    log.warning("peer berlin is down")
    line = stream.getvalue().strip()
    assert line.endswith("l2bridge[london] WARNING: peer berlin is down") and line[:4].isdigit()


def test_a_journal_stream_of_another_file_is_not_ours(monkeypatch) -> None:
    with tempfile.TemporaryFile("w+") as mine, tempfile.TemporaryFile("w+") as other:
        info = os.fstat(other.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        assert not logs.under_journald(mine) and logs.under_journald(other)


def test_repeated_warnings_are_printed_once_and_counted(monkeypatch) -> None:
    stream = io.StringIO()
    log, clock = logger_into(stream, monkeypatch)
    for _ in range(57):
        log.warning("peer berlin: cannot resolve berlin.example (will retry)")
        clock[0] += 0.1
    log.info("an info line is never held back")
    log.info("an info line is never held back")
    log.warning("something else")
    lines = [line.split(": ", 1)[1] for line in stream.getvalue().splitlines()]
    assert lines == [
        "peer berlin: cannot resolve berlin.example (will retry)",
        "an info line is never held back",
        "an info line is never held back",
        "the last message repeated 56 more times in 6 s: "
        "peer berlin: cannot resolve berlin.example (will retry)",
        "something else",
    ]


def test_after_the_window_a_repeat_is_printed_again(monkeypatch) -> None:
    stream = io.StringIO()
    log, clock = logger_into(stream, monkeypatch)
    log.warning("x")
    log.warning("x")
    clock[0] += logs.REPEAT_WINDOW_S + 1
    log.warning("x")
    handler = logging.getLogger("l2bridge").handlers[0]
    logs.flush(handler)
    lines = [line.split(": ", 1)[1] for line in stream.getvalue().splitlines()]
    assert lines == ["x", "the last message repeated 1 more times in 11 s: x", "x"]
