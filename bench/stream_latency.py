"""Server-added latency: the dev upstream called directly vs. the same streams through daphne + the engine.

Starts the simulator (`manage.py devllm`) and one daphne process on loopback, then runs the same streams
both ways, for 1 and for N concurrent streams, and prints time to first token and the gaps between
deltas side by side. Figures are printed, not asserted.

    uv run python bench/stream_latency.py [--streams 1,50] [--tokens 200] [--tps 50] [--ttft 0.2]
"""

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import websockets
from httpx_sse import aconnect_sse
from websockets.typing import Origin

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import free_port  # noqa: E402


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"process exited early with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def direct_stream(base_url: str, model: str, prompt: str) -> tuple[float, list[float]]:
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    async with httpx.AsyncClient(timeout=60) as client:
        started = time.perf_counter()
        arrivals = []
        async with aconnect_sse(client, "POST", f"{base_url}/chat/completions", json=body) as source:
            async for sse in source.aiter_sse():
                if sse.data == "[DONE]":
                    break
                choices = json.loads(sse.data).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    arrivals.append(time.perf_counter())
    return arrivals[0] - started, [b - a for a, b in itertools.pairwise(arrivals)]


async def app_stream(ws_url: str, origin: str, session: str, model: str, prompt: str) -> tuple[float, list[float]]:
    async with websockets.connect(
        ws_url,
        origin=Origin(origin),
        additional_headers={"Cookie": f"sessionid={session}"},
    ) as ws:
        await ws.recv()  # ready
        started = time.perf_counter()
        frame = {"type": "send", "id": uuid.uuid4().hex, "content": prompt, "model": model}
        await ws.send(json.dumps(frame))
        arrivals = []
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == "delta":
                arrivals.append(time.perf_counter())
            elif event["type"] in ("done", "error"):
                break
    return arrivals[0] - started, [b - a for a, b in itertools.pairwise(arrivals)]


async def run(
    label: str, streams: int, make: Callable[[int], Awaitable[tuple[float, list[float]]]]
) -> dict[str, float]:
    results = await asyncio.gather(*(make(i) for i in range(streams)))
    ttfts = [r[0] * 1000 for r in results]
    gaps = [g * 1000 for r in results for g in r[1]]
    row = {
        "ttft_p50": percentile(ttfts, 0.5),
        "ttft_p99": percentile(ttfts, 0.99),
        "gap_p50": percentile(gaps, 0.5),
        "gap_p99": percentile(gaps, 0.99),
        "deltas": len(gaps) / streams + 1,
    }
    print(
        f"{label:<28} {streams:>4}  ttft p50 {row['ttft_p50']:7.1f} ms  p99 {row['ttft_p99']:7.1f} ms   "
        f"gap p50 {row['gap_p50']:6.1f} ms  p99 {row['gap_p99']:6.1f} ms   deltas/stream {row['deltas']:6.1f}"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="1,50", help="comma-separated concurrency levels")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--tps", type=float, default=50)
    parser.add_argument("--ttft", type=float, default=0.2)
    args = parser.parse_args()
    levels = [int(n) for n in args.streams.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "DJANGO_DEBUG": "0",
        "SECRET_KEY": "bench-only-" + uuid.uuid4().hex,
        "SECURE_SSL_REDIRECT": "0",
        "ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": f"sqlite:///{workdir / 'bench.sqlite3'}",
        "LOG_LEVEL": "WARNING",
        "CHAT_MAX_CONCURRENT_PER_USER": str(max(levels) + 1),
    }
    env.pop("REDIS_URL", None)
    llm_port, app_port = free_port(), free_port()
    manage = [sys.executable, "manage.py"]
    devllm = subprocess.Popen(
        [*manage, "devllm", "--port", str(llm_port), "--ttft", str(args.ttft), "--tps", str(args.tps),
         "--tokens", str(args.tokens)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{llm_port}/v1"
    env |= {"LLM_BASE_URL": base_url, "LLM_MODELS": "dev", "LLM_SIMULATOR": "1"}
    subprocess.run([*manage, "migrate", "--noinput"], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    make_session = (
        "from django.contrib.auth import get_user_model; from django.test import Client; "
        "u = get_user_model().objects.create_user('bench'); c = Client(); c.force_login(u); "
        "print(c.cookies['sessionid'].value)"
    )
    session = subprocess.run(
        [*manage, "shell", "--no-imports", "-c", make_session],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    daphne = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(app_port), "chatproject.asgi:application"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_port(llm_port, devllm)
        wait_port(app_port, daphne)
        ws_url, origin = f"ws://127.0.0.1:{app_port}/ws/chat/", f"http://127.0.0.1:{app_port}"
        print(f"dev upstream (simulator): ttft {args.ttft * 1000:.0f} ms, {args.tps:g} tokens/s, {args.tokens} tokens")
        for streams in levels:
            direct = asyncio.run(
                run("upstream called directly", streams, lambda i: direct_stream(base_url, "dev", f"prompt {i}"))
            )
            app = asyncio.run(
                run(
                    "through daphne + engine",
                    streams,
                    lambda i: app_stream(ws_url, origin, session, "dev", f"prompt {i}"),
                )
            )
            print(
                f"{'server-added':<28} {streams:>4}  ttft p50 {app['ttft_p50'] - direct['ttft_p50']:+7.1f} ms  "
                f"p99 {app['ttft_p99'] - direct['ttft_p99']:+7.1f} ms   "
                f"gap p99 {app['gap_p99'] - direct['gap_p99']:+6.1f} ms (deltas are coalesced per window)\n"
            )
    finally:
        for process in (daphne, devllm):
            process.terminate()
            process.wait(timeout=10)


if __name__ == "__main__":
    main()
