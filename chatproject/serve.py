"""`python -m chatproject.serve [daphne options] chatproject.asgi:application`: daphne on uvloop.

The same command line as `daphne`, with two changes to what runs under it:
- uvloop's event loop under Twisted's asyncio reactor: the loop's own overhead per socket event is a good
  part of the CPU spent moving a token (docs/benchmarks.md). Without uvloop (on a platform it does not
  support) it is asyncio's own loop.
- autobahn (daphne's WebSocket implementation) computes the arguments of its debug log lines whether or not
  anything logs at debug level: for every frame sent, three `hltype`/`hlval` calls that color names and
  values for a terminal with click, about a sixth of the CPU of sending a frame. They are replaced by a
  function that hands the value over as it is, which a log line formats only if it is ever emitted.
"""

import asyncio
import contextlib
from typing import Any

with contextlib.suppress(ImportError):
    import uvloop

    # Before daphne imports its reactor: daphne creates the loop Twisted runs on at import.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

import autobahn.twisted.websocket
import autobahn.websocket.protocol
from daphne.cli import CommandLineInterface


def _as_is(value: Any, *args: Any, **kwargs: Any) -> Any:
    return value


for _module in (autobahn.websocket.protocol, autobahn.twisted.websocket):
    _module.hltype = _as_is  # type: ignore[attr-defined]
    _module.hlval = _as_is  # type: ignore[attr-defined]

if __name__ == "__main__":
    CommandLineInterface.entrypoint()
