"""`python -m chatproject.serve [daphne options] chatproject.asgi:application`: daphne on uvloop.

The same command line as `daphne`, with uvloop's event loop under Twisted's asyncio reactor: the loop's
own overhead per socket event is a good part of the CPU spent moving a token (docs/benchmarks.md).
Without uvloop (on a platform it does not support) it is plain daphne.
"""

import asyncio
import contextlib

with contextlib.suppress(ImportError):
    import uvloop

    # Before daphne imports its reactor: daphne creates the loop Twisted runs on at import.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

from daphne.cli import CommandLineInterface

if __name__ == "__main__":
    CommandLineInterface.entrypoint()
