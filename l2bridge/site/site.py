"""One site's dataplane, running: the tasks of its rooms over one ``SiteState``.

``Site(config, tap=..., transport=...)`` builds the state; ``run`` resolves the
configured endpoints (the leader) and starts, in one nursery:

  loop.run       tap → peers and peers → tap, one wake-up for both
  events.timers  handshakes, keepalives, liveness (a follower: events.follower_timers)
  events.table_gc  aged MAC entries
  reach.run      (the leader) TCP links, hints, relays, punching, DNS re-resolution
  guard.run      loop probes, blocks and the layer-2 reports (the leader)

``status()`` and ``fdb()`` are the views the control socket serves.  A worker
of a multi-core site is a ``Site`` with its lane (``l2bridge.site.workers``).
"""

from __future__ import annotations

from typing import Any

import trio

from l2bridge.core.config import SiteConfig
from l2bridge.io.tap import Tap
from l2bridge.io.transport import Transport
from l2bridge.site import events, guard, inbound, loop, reach, status
from l2bridge.site.state import SiteState


class Site:
    """A learning switch whose ports are the tap and the peers (DESIGN §2), running."""

    def __init__(self, config: SiteConfig, *, tap: Tap, transport: Transport,
                 **options: Any) -> None:
        """The site's state, built from ``options`` (``SiteState``'s keywords)."""
        self.state = SiteState(config, tap=tap, transport=transport, **options)
        guard.install(self.state)
        inbound.select(self.state)
        reach.prepare(self.state)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every task of the site until cancelled."""
        state = self.state
        state.started_at = trio.current_time()
        if not state.follower:
            for peer in state.peers:
                if peer.configured is not None:
                    await reach.resolve(state, peer)
        async with trio.open_nursery() as nursery:
            state.nursery = nursery
            nursery.start_soon(loop.run, state)
            nursery.start_soon(events.follower_timers if state.follower else events.timers, state)
            nursery.start_soon(events.table_gc, state)
            if not state.follower:
                nursery.start_soon(reach.run, state)
                nursery.start_soon(guard.run, state)
            task_status.started()

    def status(self) -> dict:
        """What ``l2bridge show`` prints."""
        return status.show(self.state, trio.current_time())

    def fdb(self) -> list[dict]:
        """What ``l2bridge fdb`` prints."""
        return status.fdb(self.state, trio.current_time())
