"""The errors a user can see, and the exit statuses of every l2bridge command.

One family: every error that reaches a person derives from ``L2bridgeError``,
whose ``str()`` is one line naming what failed, where, and what to do, and whose
``exit_status`` is what the command exits with.  A command catches that one type
(``sole_cause`` first unwraps trio's exception groups):

    L2bridgeError                 runtime failure (exit 1)
    ├── UsageError                bad input: config, scenario, keys, paths (exit 2)
    │     SchemaError (ConfigError, ScenarioError), KeyFormatError, ControlPathError,
    │     PreflightError
    ├── KernelError               the kernel refused (errno attached)
    │     TapError, NetctlError, TransportError, PmQosError
    ├── PeerError                 a peer or its endpoint misbehaves
    └── ControlError, WorkerError, PlumbingError, LabError, GatewayError, TrafficError, ...

Errors that never reach a person (a malformed datagram: ``WireError``,
``OffloadError``, ``HandshakeError``) are counted as drops and are not part of it.
"""

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


class UsageError(L2bridgeError):
    """Bad input (a configuration, a scenario, a key file, a path): nothing was changed."""

    exit_status = EXIT_USAGE


class KernelError(L2bridgeError):
    """The kernel refused an operation; ``errno`` is its error number when one is known."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


class PeerError(L2bridgeError):
    """A peer, or the way to reach it, cannot be used (e.g. its endpoint does not resolve)."""


def sole_cause(exc: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups, else ``exc``.

    trio wraps an error raised inside a nursery in an ExceptionGroup; a command
    line wants the error itself, to print its one-line message.  Several errors
    of one type at once (two workers stopping together) count as one: the first;
    so do several l2bridge errors (the dataplane and the plumbing watcher both
    noticing a deleted tap): each is one line about the same event.
    """
    while isinstance(exc, BaseExceptionGroup):
        leaves = [sole_cause(e) for e in exc.exceptions]
        same_type = len({type(leaf) for leaf in leaves}) == 1
        if not same_type and not all(isinstance(leaf, L2bridgeError) for leaf in leaves):
            return exc
        exc = leaves[0]
    return exc
