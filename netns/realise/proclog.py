"""The tail of a lab process's log, for error messages that show why it failed."""

from __future__ import annotations


def log_tail(path: str, lines: int) -> str:
    """The last ``lines`` lines of the log at ``path``, indented under an error line."""
    try:
        with open(path, errors="replace") as f:
            tail = f.read().splitlines()[-lines:]
    except OSError:
        return " (no log)"
    return "".join(f"\n  | {line}" for line in tail) if tail else " (empty)"
