"""Helpers for turning failures into one clear line at the command line."""

from __future__ import annotations

# Exit status of every l2bridge command (the site and the lab alike).
EXIT_OK = 0
EXIT_FAILED = 1  # a runtime failure: a device, a socket, a peer, a check
EXIT_USAGE = 2  # bad usage, bad configuration or scenario, missing program; nothing created


class L2bridgeError(Exception):
    """An error a user can see: ``str()`` is one line naming what failed and the fix.

    ``exit_status`` is the status a command exits with when this is its cause.
    """

    exit_status = EXIT_FAILED


def sole_cause(exc: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups, else ``exc``.

    trio wraps an error raised inside a nursery in an ExceptionGroup; a command
    line wants the error itself, to print its one-line message.  Several errors
    of one type at once (two workers stopping together) count as one: the first.
    """
    while isinstance(exc, BaseExceptionGroup):
        leaves = [sole_cause(e) for e in exc.exceptions]
        if len({type(leaf) for leaf in leaves}) != 1:
            return exc
        exc = leaves[0]
    return exc
