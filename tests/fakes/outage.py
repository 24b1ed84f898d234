"""Platform outages for the fakes: the host vanishes from the network and comes back later on the
same address, with everything it had recorded still there.

    task = fake.outage(10)   # down now, back in 10 s
    await fake.go_down(); ...; await fake.come_back()

While down, connecting to the fake's port is refused, and every connection that was open
(keep-alive REST connections, websockets) is cut without a closing handshake: clients get
connection errors, never an HTTP error or a websocket close code, and get them at once (a host
that drops packets instead would only make them wait out their own timeouts, which tests cannot
afford; FakeDiscord.hang() shows that case). A request the fake was still working on when
it went down (waiting out `latency` or `hang`) is never applied: its answer could not reach the
client anyway, and a platform that vanished did not act on it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web


class Outages:
    """Mixed into a fake served by one aiohttp `AppRunner` (`_runner`).

    The fake calls `Outages.__init__`, says where it listens (`_listen_address`), may react to
    going down (`_went_down`), and asks `_cut_off(generation)` before applying a request that
    arrived in `generation` (`_generation` when it arrived).
    """

    _runner: web.AppRunner | None

    def __init__(self) -> None:
        self._down = False
        self._generation = 0  # one more at every go_down
        self._reservation: socket.socket | None = None
        self._outages: set[asyncio.Task[None]] = set()

    def _listen_address(self) -> tuple[str, int]:
        raise NotImplementedError

    def _went_down(self) -> None:
        """Forget what only a live connection knows (a gateway identified, a socket open)."""

    @property
    def is_down(self) -> bool:
        return self._down

    def _cut_off(self, generation: int) -> bool:
        """Whether the fake went down since a request of `generation` arrived."""
        return generation != self._generation

    async def go_down(self) -> None:
        self._vanish()
        # A few turns of the loop: the aborted sockets close, then in-process clients read the
        # end of their connections and drop them from their pools, so that their next request
        # connects anew and is refused rather than written on a dead keep-alive connection.
        for _ in range(5):
            await asyncio.sleep(0)

    async def come_back(self) -> None:
        if not self._down or self._runner is None:
            return
        host, port = self._listen_address()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        self._release()
        self._down = False

    def outage(self, seconds: float) -> asyncio.Task[None]:
        """Down now (before this returns), back after `seconds`; await the task for the return."""
        self._vanish()
        task = asyncio.create_task(self._back_after(seconds, self.come_back))
        self._outages.add(task)
        task.add_done_callback(self._outages.discard)
        return task

    @staticmethod
    async def _back_after(seconds: float, back: Callable[[], Awaitable[None]]) -> None:
        await asyncio.sleep(seconds)
        await back()

    def _vanish(self) -> None:
        """Synchronous, so that `outage` takes the fake down before the caller's next await."""
        if self._down or self._runner is None:
            return
        host, port = self._listen_address()
        self._down = True
        self._generation += 1
        # What `BaseSite.stop()` does, without its await: stop listening (open connections
        # are reset below).
        for site in list(self._runner.sites):
            server = getattr(site, "_server", None)
            if server is not None:
                server.close()
            self._runner._unreg_site(site)
        self._reserve(host, port)
        server = self._runner.server
        for handler in server.connections if server is not None else ():
            if handler.transport is not None:
                handler.transport.abort()
        self._went_down()

    def _reserve(self, host: str, port: int) -> None:
        # Hold the port with a bound socket that never listens: the kernel still refuses
        # connections to it (no listener), and no client's outgoing connection can take the
        # port as its local one meanwhile, so `come_back` can always listen there again.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        reservation = socket.socket(family, socket.SOCK_STREAM)
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            reservation.bind((host, port))
        except OSError:
            reservation.close()  # best effort: come_back then simply binds the port again
            return
        self._reservation = reservation

    def _release(self) -> None:
        if self._reservation is not None:
            self._reservation.close()
            self._reservation = None

    def _end_outages(self) -> None:
        """On close: no come-back may start a listener on a closed fake."""
        for task in list(self._outages):
            task.cancel()
        self._release()
