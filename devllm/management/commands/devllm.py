"""`manage.py devllm`: serves the dev upstream, an OpenAI-compatible SIMULATOR, on its own until Ctrl-C."""

import asyncio
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from devllm.simulator import DevLLM, DevOptions


class Command(BaseCommand):
    help = "Serves the dev upstream: an OpenAI-compatible SIMULATOR of a model server. It runs no model."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8001, help="0 picks a free port")
        parser.add_argument("--ttft", type=float, default=settings.DEVLLM_TTFT, help="seconds to the first token")
        parser.add_argument("--tps", type=float, default=settings.DEVLLM_TPS, help="tokens per second")
        parser.add_argument("--tokens", type=int, default=settings.DEVLLM_TOKENS, help="answer length in tokens")
        parser.add_argument("--models", default="dev", help="comma-separated model names to serve")

    def handle(self, *args: Any, **options: Any) -> None:
        models = [name.strip() for name in options["models"].split(",") if name.strip()]
        try:
            defaults = DevOptions(ttft=options["ttft"], tps=options["tps"], tokens=options["tokens"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        server = DevLLM(models=models, defaults=defaults)
        try:
            asyncio.run(self._serve(server, options["host"], options["port"]))
        except KeyboardInterrupt:
            self.stdout.write("devllm simulator stopped.")

    async def _serve(self, server: DevLLM, host: str, port: int) -> None:
        base_url = await server.start(host, port)
        self.stdout.write(
            f"devllm: a SIMULATOR of an OpenAI-compatible model server (no real model) at {base_url} "
            f"serving {', '.join(server.models)}. Use LLM_BASE_URL={base_url} LLM_SIMULATOR=1. Ctrl-C stops it."
        )
        # Whoever started this process (a script, a benchmark) may be waiting for this line on a pipe.
        self.stdout.flush()
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()
