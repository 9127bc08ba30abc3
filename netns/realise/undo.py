"""An undo stack: register the undo of each object as soon as the object exists.

Flow: ``push`` right after an acquisition succeeds; ``unwind`` runs every undo in
reverse order, never stops at a failing one, and returns the problems as one-line
strings so teardown always finishes and the caller decides how to report them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class UndoStack:
    _undos: list[tuple[str, Callable[[], object]]] = field(default_factory=list)

    def push(self, what: str, undo: Callable[[], object]) -> None:
        """Register ``undo`` (described as ``what``) to run at unwind time."""
        self._undos.append((what, undo))

    def __len__(self) -> int:
        return len(self._undos)

    def unwind(self) -> list[str]:
        """Run every undo, newest first; return ``"what: error"`` for each that failed."""
        problems = []
        while self._undos:
            what, undo = self._undos.pop()
            try:
                undo()
            except Exception as e:  # noqa: BLE001 - teardown must go on
                problems.append(f"{what}: {e}")
        return problems
