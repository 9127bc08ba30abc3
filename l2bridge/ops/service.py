"""A running site as a service: live reconfiguration, the service manager, the config it runs.

``Service`` wraps one running ``Site`` (the leader's, with its workers):

Reload (SIGHUP or ``l2bridge reload``), one at a time:
  1. read and check the config file again, and the key files it names (any
     problem: one line, the site runs on unchanged);
  2. ``core.reload.plan``: keys that cannot change live refuse the whole reload,
     naming each (exit status 2 for ``l2bridge reload``);
  3. ``RELOADING=1``; the leader's site applies the plan (``site.reload``), then
     every worker gets the new config and applies the same plan; the log says
     what changed; ``READY=1``.
  SIGHUP storms coalesce: a reload asked for while one runs runs once after it.

Service manager (``run``): ``STATUS=`` when the summary line changes, and
``WATCHDOG=1`` every half watchdog interval while ``status.health`` says the
dataplane is alive (the first reason it is not is logged once).

``view()`` is the ``config`` section of ``show``: the file, when it was
loaded, the last reload's result, reload counts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable

import trio

from l2bridge.core import reload as planning
from l2bridge.core.config import SiteConfig, load_config, load_secrets
from l2bridge.core.keys import Secrets
from l2bridge.errors import L2bridgeError, UsageError
from l2bridge.io.notify import Notifier
from l2bridge.site import reload as applying
from l2bridge.site import status
from l2bridge.site.site import Site

log = logging.getLogger("l2bridge")

STATUS_EVERY_S = 2.0
RELOAD_TIMEOUT_S = 20.0

# What the workers do with a reload: ship the new config and wait until applied.
Followers = Callable[[SiteConfig, Secrets], Awaitable[None]]


class ReloadError(UsageError):
    """A reload that changed nothing; the message says why (one line)."""


class Service:
    """The site as a service (module docstring)."""

    def __init__(self, site: Site, secrets: Secrets, notifier: Notifier) -> None:
        self.site = site
        self.secrets = secrets
        self.notifier = notifier
        self.followers: Followers | None = None
        self.loaded_at = time.time()
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.last: dict | None = None
        self._lock = trio.Lock()
        self._wanted = trio.Event()

    @property
    def config(self) -> SiteConfig:
        return self.site.state.config

    # ------------------------------------------------------------ reload

    async def reload(self) -> dict:
        """Reload now (module docstring); the answer for ``l2bridge reload``."""
        async with self._lock:
            with trio.fail_after(RELOAD_TIMEOUT_S):
                try:
                    changes = await self._reload()
                except L2bridgeError as exc:
                    self.reloads_failed += 1
                    self.last = {"at": _now_text(), "result": "failed", "message": str(exc)}
                    log.error("reload refused: %s", exc)
                    self.notifier.ready(self.summary())
                    raise ReloadError(str(exc)) from None
            self.reloads_ok += 1
            self.loaded_at = time.time()
            self.last = {"at": _now_text(), "result": "ok", "message": changes}
            log.info("reloaded %s: %s", self.config.path, changes)
            self.notifier.ready(self.summary())
            return {"result": "ok", "path": self.config.path, "changes": changes}

    async def _reload(self) -> str:
        path = self.config.path
        self.notifier.reloading()
        new = load_config(path)
        secrets = load_secrets(new)
        plan = planning.plan(self.config, new, self.secrets, secrets)
        if plan.refused:
            raise ReloadError(plan.refusal(path))
        if plan.empty:
            self.site.state.config = new
            return "no change"
        applying.apply(self.site.state, plan, new, secrets)
        self.secrets = secrets
        logging.getLogger("l2bridge").setLevel(new.log_level.upper())
        if self.followers is not None:
            await self.followers(new, secrets)
        return plan.describe()

    def request_reload(self) -> None:
        """SIGHUP: reload soon; requests while one is pending or running coalesce."""
        self._wanted.set()

    async def _reloads(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            with contextlib.suppress(ReloadError):  # said in the log; the site runs on
                await self.reload()

    # ------------------------------------------------------------ service manager

    def summary(self) -> str:
        return status.summary(self.site.state, trio.current_time())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """SIGHUP reloads, ``STATUS=`` lines and watchdog pings, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reloads)
            task_status.started()
            interval = self.notifier.watchdog_interval_s
            tick = min(STATUS_EVERY_S, interval or math.inf)
            shown = None
            unwell: str | None = None
            while True:
                now = trio.current_time()
                line = status.summary(self.site.state, now)
                if line != shown:
                    self.notifier.status(line)
                    shown = line
                if interval is not None:
                    reason = status.health(self.site.state, now)
                    if reason is None:
                        self.notifier.watchdog()
                    elif reason != unwell:
                        log.error("watchdog: not pinging the service manager: %s", reason)
                    unwell = reason
                await trio.sleep(tick)

    def view(self) -> dict:
        """The ``config`` section of ``l2bridge show``."""
        return {
            "path": self.config.path,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.loaded_at)),
            "last_reload": self.last,
            "reloads_ok": self.reloads_ok,
            "reloads_failed": self.reloads_failed,
        }


def _now_text() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
