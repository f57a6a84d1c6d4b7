"""`make bench`: the benchmark suite, side by side in one run, on loopback against the dev upstream.

The simulator answers at a realistic pace (first token after 300 ms, then 50 tokens a second). Every
scenario is bounded in time; the whole suite takes a few minutes on a 2-core machine. It prints a table,
writes `results.json` and PNG plots into bench/results/<time>/, and docs/benchmarks.md explains the method.

    uv run python bench/suite.py [--only burst,followup,fixed,classic,load,capacity,coalescing,writes,
                                         scaleout,servers,browser] [--bursts 50,200,500]
"""

import argparse
import asyncio
import bisect
import contextlib
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()
logging.getLogger("matplotlib").setLevel(logging.WARNING)

import httpx  # noqa: E402
import psycopg  # noqa: E402

from bench import load, plots, servers  # noqa: E402
from bench.load import Socket, Stream  # noqa: E402
from devllm.simulator import DevOptions  # noqa: E402
from tests.support import collect_static  # noqa: E402

TTFT, TPS = 0.3, 50.0
PG_ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"


@dataclass
class Setup:
    env: dict[str, str]
    upstream: servers.Process
    base_url: str
    database: str  # "postgresql" or "sqlite"


def model(tokens: int) -> str:
    return f"dev:tokens={tokens}"


def options(tokens: int) -> DevOptions:
    return DevOptions(ttft=TTFT, tps=TPS, tokens=tokens)


@contextlib.contextmanager
def database(workdir: str) -> Iterator[tuple[str, str]]:
    """A PostgreSQL database of the run's own when a server answers on 127.0.0.1:5432, else SQLite."""
    name = f"chat_bench_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=2) as connection:
            connection.execute(f"CREATE DATABASE {name}")
    except psycopg.Error:
        yield f"sqlite:///{workdir}/bench.sqlite3", "sqlite"
        return
    try:
        yield f"postgres://postgres@127.0.0.1:5432/{name}", "postgresql"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def base_env(database_url: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "DATABASE_URL", "REDIS_URL", "LLM_", "CHAT_", "SECRET_KEY"))
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "chatproject.settings",
            "DJANGO_DEBUG": "0",
            "SECRET_KEY": "bench-only-" + uuid.uuid4().hex,
            "SECURE_SSL_REDIRECT": "0",
            "SECURE_COOKIES": "0",
            "ALLOWED_HOSTS": "127.0.0.1",
            "DATABASE_URL": database_url,
            "LOG_LEVEL": "WARNING",
            # The benchmark is one tenant opening hundreds of answers at once: lift the per-user guards.
            "CHAT_MAX_CONCURRENT_PER_USER": "100000",
            "CHAT_MAX_MESSAGES_PER_MINUTE": "1000000",
            "CHAT_MAX_SOCKETS_PER_USER": "100000",
        }
    )
    return env


# --- measuring one level of load ----------------------------------------------------------------------------


@dataclass
class LevelResult:
    streams: int
    ttft: list[float]
    lateness: list[float]
    tokens: int
    frames: int
    bytes: int
    seconds: float
    errors: int
    server_cpu: float | None = None
    rss_idle_per_socket: float | None = None
    rss_per_stream: float | None = None
    rss_peak: float | None = None  # the server's resident set at its largest during the level, in bytes
    client_cpu: float | None = None
    token_times: list[float] = field(default_factory=list)  # every token's arrival, sorted
    steady_cpu_per_token: float | None = None  # CPU seconds per token while every stream was under way
    steady_lateness: list[float] = field(default_factory=list)  # lateness of the tokens of that window

    def row(self) -> dict[str, Any]:
        return {
            "streams": self.streams,
            "ttft_ms": {k: v * 1000 for k, v in load.summary(self.ttft).items()},
            "lateness_ms": {k: v * 1000 for k, v in load.summary(self.lateness).items()},
            "tokens": self.tokens,
            "frames_per_s": self.frames / self.seconds if self.seconds else 0,
            "bytes_per_s": self.bytes / self.seconds if self.seconds else 0,
            "errors": self.errors,
            "server_cpu_s": self.server_cpu,
            "server_cpu_us_per_token": self.server_cpu / self.tokens * 1e6 if self.server_cpu and self.tokens else None,
            "steady_cpu_us_per_token": self.steady_cpu_per_token * 1e6 if self.steady_cpu_per_token else None,
            "steady_lateness_ms": {k: v * 1000 for k, v in load.summary(self.steady_lateness).items()},
            "rss_kb_per_idle_socket": None if self.rss_idle_per_socket is None else self.rss_idle_per_socket / 1024,
            "rss_kb_per_live_stream": None if self.rss_per_stream is None else self.rss_per_stream / 1024,
            "rss_peak_mb": None if self.rss_peak is None else self.rss_peak / 2**20,
            "client_cpu_s": self.client_cpu,
        }


def measure(streams: list[Stream], tokens: int, seconds: float, count: int) -> LevelResult:
    """Stream `i` asked for `tokens` tokens with the prompt "bench i"; its lateness is judged against that."""
    arrivals = [
        load.token_arrivals(stream, load.token_ends(f"bench {i}", options(tokens))) for i, stream in enumerate(streams)
    ]
    start, end = steady_window(streams)
    steady = [
        late
        for times in arrivals
        if times
        for arrived, late in zip(times, load.lateness(times, TPS), strict=True)
        if start <= arrived <= end
    ]
    return LevelResult(
        streams=count,
        ttft=[stream.ttft for stream in streams if stream.ttft is not None],
        lateness=[late for times in arrivals if times for late in load.lateness(times, TPS)],
        tokens=sum(len(times) for times in arrivals),
        frames=sum(stream.frames for stream in streams),
        bytes=sum(stream.bytes for stream in streams),
        seconds=seconds,
        errors=sum(1 for stream in streams if stream.error),
        token_times=sorted(t for times in arrivals for t in times),
        steady_lateness=steady,
    )


async def upstream_level(setup: Setup, count: int, tokens: int, spread: float) -> LevelResult:
    streams = [Stream() for _ in range(count)]
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        seconds = await load.run_staggered(
            count,
            spread,
            lambda i: load.upstream_stream(setup.base_url, model(tokens), f"bench {i}", streams[i], client),
        )
    return measure(streams, tokens, seconds, count)


async def socket_level(
    pids: list[int], port: int, sessions: list[str], count: int, tokens: int, spread: float
) -> LevelResult:
    """`count` WebSockets to `port` opened first (idle), then one answer each, started evenly over `spread`
    seconds; the server's CPU and memory are those of the processes `pids`."""
    url, origin = f"ws://127.0.0.1:{port}/ws/chat/", f"http://127.0.0.1:{port}"
    sockets = [Socket(url, origin, sessions[i % len(sessions)]) for i in range(count)]
    before = servers.usage_of(pids)
    opening = asyncio.Semaphore(50)

    async def open_one(socket: Socket) -> None:
        async with opening:
            await socket.open()

    await asyncio.gather(*(open_one(socket) for socket in sockets))
    await asyncio.sleep(1.0)
    idle = servers.usage_of(pids)
    streams = [Stream() for _ in range(count)]
    peak = idle.rss
    client_before = servers.usage(os.getpid()).cpu
    cpu_series: list[tuple[float, float]] = []

    async def sample() -> None:
        nonlocal peak
        while True:
            await asyncio.sleep(0.25)
            now = servers.usage_of(pids)
            peak = max(peak, now.rss)
            cpu_series.append((time.perf_counter(), now.cpu))

    sampler = asyncio.create_task(sample())
    try:
        seconds = await load.run_staggered(
            count, spread, lambda i: sockets[i].answer(model(tokens), f"bench {i}", streams[i])
        )
    finally:
        sampler.cancel()
    after = servers.usage_of(pids)
    client_cpu = servers.usage(os.getpid()).cpu - client_before
    await asyncio.gather(*(socket.close() for socket in sockets), return_exceptions=True)
    result = measure(streams, tokens, seconds, count)
    result.steady_cpu_per_token = steady_cpu(streams, result.token_times, cpu_series)
    result.server_cpu = after.cpu - idle.cpu
    result.rss_idle_per_socket = max(0, idle.rss - before.rss) / count
    result.rss_per_stream = max(0, peak - idle.rss) / count
    result.client_cpu = client_cpu
    return result


async def burst_level(
    pids: list[int], port: int, users: list[tuple[str, str | None]], tokens: int, spread: float
) -> LevelResult:
    """Each user opens a WebSocket and sends at once, the users evenly over `spread` seconds: what real traffic
    starting at a rate looks like. `users` are (session, conversation): a conversation to continue, or None for a
    new one. The time to first token runs from each send; the handshake (with its session lookup) is part of the
    load the server carries meanwhile."""
    count = len(users)
    url, origin = f"ws://127.0.0.1:{port}/ws/chat/", f"http://127.0.0.1:{port}"
    sockets = [Socket(url, origin, session) for session, _ in users]
    streams = [Stream() for _ in range(count)]
    before = servers.usage_of(pids)
    peak = before.rss
    cpu_series: list[tuple[float, float]] = []

    async def sample() -> None:
        nonlocal peak
        while True:
            await asyncio.sleep(0.25)
            now = servers.usage_of(pids)
            peak = max(peak, now.rss)
            cpu_series.append((time.perf_counter(), now.cpu))

    async def one(index: int) -> None:
        await sockets[index].open()
        await sockets[index].answer(model(tokens), f"bench {index}", streams[index], users[index][1])

    sampler = asyncio.create_task(sample())
    try:
        seconds = await load.run_staggered(count, spread, one)
    finally:
        sampler.cancel()
    after = servers.usage_of(pids)
    await asyncio.gather(*(socket.close() for socket in sockets), return_exceptions=True)
    result = measure(streams, tokens, seconds, count)
    result.steady_cpu_per_token = steady_cpu(streams, result.token_times, cpu_series)
    result.server_cpu = after.cpu - before.cpu
    result.rss_per_stream = max(0, peak - before.rss) / count
    result.rss_peak = peak
    return result


def app_env(setup: Setup, **env: str) -> dict[str, str]:
    """The product's environment against the benchmark's simulator."""
    return {**setup.env, "LLM_BASE_URL": setup.base_url, "LLM_MODELS": "dev", "LLM_SIMULATOR": "1", **env}


def steady_window(streams: list[Stream]) -> tuple[float, float]:
    """While every stream was delivering text: from the last first token to the first stream's end (empty
    when the streams did not overlap). Connection setup, sends and final writes are outside it."""
    firsts = [stream.arrivals[0][0] for stream in streams if stream.arrivals]
    lasts = [stream.arrivals[-1][0] for stream in streams if stream.arrivals]
    if not firsts:
        return 0.0, -1.0
    return max(firsts) + 0.25, min(lasts) - 0.25


def steady_cpu(streams: list[Stream], token_times: list[float], cpu: list[tuple[float, float]]) -> float | None:
    """Server CPU per token in the steady window (see steady_window)."""
    start, end = steady_window(streams)
    inside = [(moment, used) for moment, used in cpu if start <= moment <= end]
    if len(inside) < 2:
        return None
    (t0, c0), (t1, c1) = inside[0], inside[-1]
    delivered = bisect.bisect_right(token_times, t1) - bisect.bisect_left(token_times, t0)
    return (c1 - c0) / delivered if delivered else None


def start_app(setup: Setup, **env: str) -> servers.Process:
    return servers.daphne(app_env(setup, **env)).start()


async def warm_up(port: int, session: str) -> None:
    """One short answer before measuring: a new process's first answer pays for imports, the first database
    and upstream connections and the first markdown render, which no later answer does."""
    socket = Socket(f"ws://127.0.0.1:{port}/ws/chat/", f"http://127.0.0.1:{port}", session)
    await socket.open()
    await socket.answer("dev:tokens=20,ttft=0,tps=1000", "warm up", Stream())
    await socket.close()


# --- scenarios ------------------------------------------------------------------------------------------------


async def classic(setup: Setup, results: dict[str, Any]) -> None:
    """One stream at a time: blocking POST, SSE and WebSocket, with the upstream called directly as the floor."""
    tokens, repeats = 100, 3
    app = start_app(setup)
    try:
        token = servers.api_token(setup.env)
        [session] = servers.sessions(setup.env, 1)
        rows: dict[str, dict[str, float]] = {}
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            httpx.AsyncClient(timeout=120) as direct,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.port}", headers=headers, timeout=120) as api,
        ):
            paths: dict[str, Callable[[int, Stream], Awaitable[None]]] = {
                "upstream (floor)": lambda i, s: load.upstream_stream(
                    setup.base_url, model(tokens), f"bench {i}", s, direct
                ),
                "blocking POST": lambda i, s: load.blocking_post(api, model(tokens), f"bench {i}", s),
                "SSE": lambda i, s: load.sse_stream(api, model(tokens), f"bench {i}", s),
            }
            for name, run in paths.items():
                streams = [Stream() for _ in range(repeats)]
                for index, stream in enumerate(streams):
                    await run(index, stream)
                rows[name] = _classic_row(streams)
            streams = [Stream() for _ in range(repeats)]
            for index, stream in enumerate(streams):
                socket = Socket(f"ws://127.0.0.1:{app.port}/ws/chat/", f"http://127.0.0.1:{app.port}", session)
                await socket.open()
                await socket.answer(model(tokens), f"bench {index}", stream)
                await socket.close()
            rows["WebSocket"] = _classic_row(streams)
    finally:
        app.stop()
    results["classic"] = {"tokens": tokens, "repeats": repeats, "paths": rows}


def _classic_row(streams: list[Stream]) -> dict[str, float]:
    ttfts = [stream.ttft for stream in streams if stream.ttft is not None]
    totals = [stream.arrivals[-1][0] - stream.started for stream in streams if stream.arrivals]
    return {"ttft_ms": load.percentile(ttfts, 0.5) * 1000, "total_ms": load.percentile(totals, 0.5) * 1000}


LEVELS = [1, 50, 200, 500]


async def load_levels(setup: Setup, results: dict[str, Any]) -> None:
    """Server-added time to first token and inter-token delay at 1-500 streams on one daphne process."""
    tokens = 250
    app = start_app(setup)
    rows = []
    try:
        sessions = servers.sessions(setup.env, 50)
        await warm_up(app.port, sessions[0])
        for count in LEVELS:
            spread = min(2.0, count / 100)
            floor = await upstream_level(setup, count, tokens, spread)
            through = await socket_level([app.pid], app.port, sessions, count, tokens, spread)
            rows.append({"floor": floor.row(), "app": through.row()})
            print(f"  load {count:>4}: done", flush=True)
    finally:
        app.stop()
    results["load"] = {"tokens": tokens, "levels": rows}


async def capacity(setup: Setup, results: dict[str, Any]) -> None:
    """The most live streams one process carries with the added inter-token p99 at or under 100 ms.

    "Carries": the answers start at 100 a second, and lateness counts the tokens sent while all of them
    were streaming (the steady window); the cost of a burst of starts shows in the load levels instead."""
    tokens, budget = 500, 0.100
    app = start_app(setup)
    rows, best = [], 0
    try:
        sessions = servers.sessions(setup.env, 50)
        await warm_up(app.port, sessions[0])
        for count in (100, 200, 300, 400, 500, 600):
            floor = await upstream_level(setup, count, tokens, count / 100)
            floor_p99 = load.percentile(floor.steady_lateness, 0.99)
            level = await socket_level([app.pid], app.port, sessions, count, tokens, count / 100)
            added = load.percentile(level.steady_lateness, 0.99) - floor_p99
            rows.append({**level.row(), "floor_p99_ms": floor_p99 * 1000, "added_p99_ms": added * 1000})
            print(f"  capacity {count:>4}: added p99 {added * 1000:.0f} ms, errors {level.errors}", flush=True)
            if added > budget or level.errors:
                break
            best = count
    finally:
        app.stop()
    results["capacity"] = {"tokens": tokens, "levels": rows, "max_streams": best}


async def coalescing(setup: Setup, results: dict[str, Any]) -> None:
    """Coalescing windows 0/16/33/50/100 ms at 200 streams: frames, bytes and CPU."""
    rows = []
    for window in (0, 16, 33, 50, 100):
        app = start_app(setup, CHAT_COALESCE_MS=str(window))
        try:
            sessions = servers.sessions(setup.env, 20)
            await warm_up(app.port, sessions[0])
            level = await socket_level([app.pid], app.port, sessions, 200, 250, 2.0)
        finally:
            app.stop()
        rows.append({"window_ms": window, **level.row()})
        print(f"  coalescing {window:>3} ms: done", flush=True)
    results["coalescing"] = rows


async def writes(setup: Setup, results: dict[str, Any]) -> None:
    """Database writes for one 1,000-token answer (PostgreSQL's own row counters)."""
    if setup.database != "postgresql":
        results["writes"] = {"skipped": "needs PostgreSQL on 127.0.0.1:5432"}
        return
    tokens, tps = 1000, 100
    app = start_app(setup)
    try:
        [session] = servers.sessions(setup.env, 1)
        counts = _row_writes(setup.env["DATABASE_URL"])
        socket = Socket(f"ws://127.0.0.1:{app.port}/ws/chat/", f"http://127.0.0.1:{app.port}", session)
        await socket.open()
        stream = Stream()
        await socket.answer(f"dev:tokens={tokens},tps={tps}", "bench writes", stream)
        await socket.close()
        seconds = stream.arrivals[-1][0] - stream.started
        await asyncio.sleep(2)  # PostgreSQL publishes its counters at most once a second
        after = _row_writes(setup.env["DATABASE_URL"])
    finally:
        app.stop()
    message_writes = after[0] - counts[0]
    results["writes"] = {
        "tokens": tokens,
        "seconds_streaming": seconds,
        "message_row_writes": message_writes,
        "conversation_row_writes": after[1] - counts[1],
        "bound": f"1 per checkpoint second ({seconds:.1f} s) + inserts and the final write",
    }


def _row_writes(database_url: str) -> tuple[int, int]:
    with psycopg.connect(database_url) as connection:
        rows: dict[str, int] = dict(
            connection.execute(
                "SELECT relname, n_tup_ins + n_tup_upd FROM pg_stat_user_tables "
                "WHERE relname IN ('conversations_message', 'conversations_conversation')"
            ).fetchall()
        )
    return int(rows.get("conversations_message", 0)), int(rows.get("conversations_conversation", 0))


async def scaleout(setup: Setup, results: dict[str, Any]) -> None:
    """One daphne process against two behind nginx, on Redis, at the same loads."""
    from bench import fleet

    results["scaleout"] = await fleet.compare(setup, socket_level, app_env, counts=(200, 500))


# The product and its peers, each started the way it is meant to run.
PEERS: dict[str, Callable[[dict[str, str]], servers.Process]] = {
    "product": servers.daphne,
    "naive": lambda env: servers.uvicorn(env, "bench.naive_app:app"),
    "relay": lambda env: servers.uvicorn(env, "bench.relay_app:application"),
}
BURSTS: tuple[int, ...] = (50, 200, 500)  # --bursts changes them


async def burst(setup: Setup, results: dict[str, Any]) -> None:
    """N distinct users (one session each) connect and send a first message within 2 s, N = 50, 200, 500: the
    product against the naive design and a bare relay, each on a fresh process, in this one run."""
    tokens, spread = 200, 2.0
    rows = []
    for count in BURSTS:
        floor = await upstream_level(setup, count, tokens, spread)
        row: dict[str, Any] = {"streams": count, "floor": floor.row()}
        for name, launch in PEERS.items():
            process = launch(app_env(setup)).start()
            try:
                sessions = servers.sessions(setup.env, count + 1) if name == "product" else ["none"] * (count + 1)
                await warm_up(process.port, sessions[-1])
                level = await burst_level(
                    [process.pid], process.port, [(s, None) for s in sessions[:count]], tokens, spread
                )
            finally:
                process.stop()
            row[name] = level.row()
            print(
                f"  burst {count:>4}, {name}: TTFT p50 {level.row()['ttft_ms']['p50']:.0f} ms, errors {level.errors}",
                flush=True,
            )
        rows.append(row)
    results["burst"] = {"tokens": tokens, "spread_s": spread, "levels": rows}


async def followup(setup: Setup, results: dict[str, Any]) -> None:
    """Turn 20 of an existing conversation, for 200 users within 2 s, against a first turn under the same load:
    the cost of the history (read from the database, sent upstream) on the time to first token."""
    tokens, spread, count, turns = 200, 2.0, 200, 19
    app = start_app(setup)
    try:
        warm = servers.sessions(setup.env, 1)[0]
        await warm_up(app.port, warm)
        first: list[tuple[str, str | None]] = [(session, None) for session in servers.sessions(setup.env, count)]
        later: list[tuple[str, str | None]] = list(servers.conversations_with_history(setup.env, count, turns))
        floor = await upstream_level(setup, count, tokens, spread)
        rows = {"floor": floor.row()}
        for name, users in (("turn 1", first), (f"turn {turns + 1}", later)):
            level = await burst_level([app.pid], app.port, users, tokens, spread)
            rows[name] = level.row()
            print(
                f"  follow-up, {name}: TTFT p50 {level.row()['ttft_ms']['p50']:.0f} ms, errors {level.errors}",
                flush=True,
            )
    finally:
        app.stop()
    results["followup"] = {"tokens": tokens, "streams": count, "turns_before": turns, "rows": rows}


async def fixed(setup: Setup, results: dict[str, Any]) -> None:
    """The fixed CPU of one answer: one socket already open, one-token answers one after another, each in a
    new conversation, on the product and its peers. Everything an answer costs besides its tokens: the send,
    the writes, the upstream request, the final frames."""
    warm, count = 20, 100
    answer_model = "dev:tokens=1,ttft=0"
    rows: dict[str, dict[str, float]] = {}
    for name, launch in PEERS.items():
        process = launch(app_env(setup)).start()
        try:
            session = servers.sessions(setup.env, 1)[0] if name == "product" else "none"
            url, origin = f"ws://127.0.0.1:{process.port}/ws/chat/", f"http://127.0.0.1:{process.port}"
            socket = Socket(url, origin, session)
            await socket.open()
            for index in range(warm):
                await socket.answer(answer_model, f"warm up {index}", Stream())
            before, began = servers.usage(process.pid).cpu, time.perf_counter()
            streams = [Stream() for _ in range(count)]
            for index, stream in enumerate(streams):
                await socket.answer(answer_model, f"bench {index}", stream)
            cpu, wall = servers.usage(process.pid).cpu - before, time.perf_counter() - began
            await socket.close()
        finally:
            process.stop()
        rows[name] = {
            "cpu_ms_per_answer": cpu / count * 1000,
            "wall_ms_per_answer": wall / count * 1000,
            "errors": sum(1 for stream in streams if stream.error),
        }
        print(f"  fixed, {name}: {rows[name]['cpu_ms_per_answer']:.2f} ms CPU per answer", flush=True)
    results["fixed"] = {"answers": count, "peers": rows}


SERVERS: dict[str, Callable[[dict[str, str], str], servers.Process]] = {
    "daphne (asyncio loop)": lambda env, application: servers.daphne(env, application, uvloop=False),
    "daphne (uvloop)": servers.daphne,
    "uvicorn (uvloop)": servers.uvicorn,
}
APPLICATIONS = {"product": "chatproject.asgi:application", "relay": "bench.relay_app:application"}


async def server_choice(setup: Setup, results: dict[str, Any]) -> None:
    """The product and the bare relay at 200 streams on each ASGI server: which one to deploy on."""
    if importlib.util.find_spec("uvicorn") is None:
        results["servers"] = {"skipped": "uvicorn is not installed (it is in the dev dependencies)"}
        return
    rows = []
    for server, launch in SERVERS.items():
        for name, application in APPLICATIONS.items():
            process = launch(app_env(setup), application).start()
            try:
                sessions = servers.sessions(setup.env, 20) if name == "product" else ["none"]
                await warm_up(process.port, sessions[0])
                level = await socket_level([process.pid], process.port, sessions, 200, 250, 2.0)
            finally:
                process.stop()
            rows.append({"server": server, "application": name, **level.row()})
            print(f"  {server}, {name}: done", flush=True)
    results["servers"] = rows


async def browser(setup: Setup, results: dict[str, Any]) -> None:
    from bench import browser as browser_bench

    # DEBUG is off, as in production: the page's script and styles are the collected, hashed files.
    static_root = str(ROOT / "bench" / "results" / ".static")
    collect_static(static_root)
    app = start_app(setup, STATIC_ROOT=static_root)
    try:
        [session] = servers.sessions(setup.env, 1)
        results["browser"] = await asyncio.to_thread(browser_bench.measure, app.port, session)
    finally:
        app.stop()


SCENARIOS: dict[str, Callable[[Setup, dict[str, Any]], Awaitable[None]]] = {
    "burst": burst,
    "followup": followup,
    "fixed": fixed,
    "classic": classic,
    "load": load_levels,
    "capacity": capacity,
    "coalescing": coalescing,
    "writes": writes,
    "scaleout": scaleout,
    "servers": server_choice,
    "browser": browser,
}


async def main(only: list[str], out: Path) -> dict[str, Any]:
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "upstream": {"ttft_s": TTFT, "tokens_per_s": TPS, "kind": "dev upstream (simulator)"},
    }
    with tempfile.TemporaryDirectory() as workdir, database(workdir) as (database_url, kind):
        env = base_env(database_url)
        servers.manage(env, "migrate", "--noinput", "-v0")
        upstream = servers.devllm(env, ttft=TTFT, tps=TPS, tokens=250).start()
        setup = Setup(env, upstream, f"http://127.0.0.1:{upstream.port}/v1", kind)
        results["database"] = kind
        try:
            for name in only:
                began = time.monotonic()
                print(f"{name} …", flush=True)
                await SCENARIOS[name](setup, results)
                results.setdefault("seconds", {})[name] = round(time.monotonic() - began, 1)
                (out / "results.json").write_text(json.dumps(results, indent=2))
        finally:
            upstream.stop()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--bursts", default=",".join(map(str, BURSTS)), help="user counts of the burst scenario")
    args = parser.parse_args()
    BURSTS = tuple(int(count) for count in args.bursts.split(","))
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    out = ROOT / "bench" / "results" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(main(chosen, out))
    plots.report(results, out)
    print(f"\nresults: {out.relative_to(ROOT)}/results.json and its plots")
