"""How a daphne process stops (SIGTERM, Ctrl-C): drain, do not drop.

1. Stop listening, so new connections go to the other processes (nginx moves on to the next one).
2. Refuse new answers (`unavailable`: clients retry them with the same id elsewhere) and close every
   WebSocket with 4503 "service restart", so its client reconnects to another process at once and watches
   from there: answers are shared through the channel layer and the database.
3. Let the answers being written here finish for up to CHAT_SHUTDOWN_GRACE_SECONDS; their deltas reach
   their watchers wherever those now are.
4. Save what is left as `interrupted` (text kept; watchers get `done`) and close the upstream connections.

This module owns the process's engine: `get_engine()` creates it on first use and, since daphne has no ASGI
lifespan, installs the signal handlers then (see `install`).
"""

import asyncio
import logging
import signal
import sys
import weakref
from typing import Any, Protocol

from django.conf import settings

from streaming.engine import Engine
from streaming.protocol import CLOSE_SERVICE_RESTART

log = logging.getLogger(__name__)


class Closable(Protocol):
    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None: ...


_sockets: "weakref.WeakSet[Closable]" = weakref.WeakSet()


def socket_opened(socket: Closable) -> None:
    _sockets.add(socket)


def socket_closed(socket: Closable) -> None:
    _sockets.discard(socket)


_engines: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Engine]" = weakref.WeakKeyDictionary()


def get_engine() -> Engine:
    """The engine of the running event loop: one per process under daphne, one per test loop in tests."""
    loop = asyncio.get_running_loop()
    engine = _engines.get(loop)
    if engine is None:
        engine = _engines[loop] = Engine()
        install(engine)
    return engine


def install(engine: Engine) -> None:
    """Makes SIGTERM and SIGINT drain the process, then stop daphne's reactor. Outside daphne, does nothing.

    Daphne's own "before shutdown" trigger cancels every application instance at once, which would drop
    the sockets without a close frame; so the signal starts the drain, and only its end stops the reactor. A
    second signal stops at once (what is still running is then saved as `interrupted` by the trigger below).
    """
    reactor = sys.modules.get("twisted.internet.reactor")  # imported by daphne; never installed from here
    if reactor is None or not getattr(reactor, "running", False):
        return
    from twisted.internet.defer import Deferred

    draining: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        if draining:
            reactor.stop()
        else:
            draining.append(asyncio.ensure_future(_drain_then_stop(engine, reactor)))

    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, on_signal)

    def before_shutdown() -> Deferred[None]:
        return Deferred.fromFuture(asyncio.ensure_future(engine.shutdown()))

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)


async def _drain_then_stop(engine: Engine, reactor: Any) -> None:
    try:
        await drain(engine, reactor)
    finally:
        reactor.stop()


async def drain(engine: Engine, reactor: Any) -> None:
    _stop_listening(reactor)
    engine.draining = True
    sockets = list(_sockets)
    log.info("shutting down", extra={"sockets": len(sockets), "generations": len(engine.generations)})
    await asyncio.gather(*(socket.close(code=CLOSE_SERVICE_RESTART) for socket in sockets), return_exceptions=True)
    await engine.shutdown(grace=settings.CHAT_SHUTDOWN_GRACE_SECONDS)


def _stop_listening(reactor: Any) -> None:
    from twisted.internet import tcp

    for reader in list(reactor.getReaders()):
        if isinstance(reader, tcp.Port):
            reader.stopListening()  # type: ignore[no-untyped-call]
