"""A loopback TCP relay whose connections a test can cut, as a dropped network or a restarted proxy would."""

import asyncio
import contextlib
import threading

from tests.support import free_port


class CuttableProxy:
    """Relays 127.0.0.1:<port> to a target port on a thread of its own; `cut()` drops every open connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="proxy", daemon=True)
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.accepted = 0

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "CuttableProxy":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(timeout=10)
        return self

    async def _listen(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        self.writers.update((client_writer, server_writer))
        await asyncio.gather(
            self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer), return_exceptions=True
        )
        for writer in (client_writer, server_writer):
            self.writers.discard(writer)
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            # Closing one direction ends the other: the relay is all or nothing, like a real cut.
            with contextlib.suppress(Exception):
                writer.close()

    def cut(self) -> int:
        """Aborts every relayed connection (no closing handshake, as a dropped link); returns how many."""

        async def abort() -> int:
            writers = list(self.writers)
            for writer in writers:
                writer.transport.abort()
            return len(writers)

        return asyncio.run_coroutine_threadsafe(abort(), self.loop).result(timeout=10)

    def stop(self) -> None:
        async def close() -> None:
            if self.server is not None:
                self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
