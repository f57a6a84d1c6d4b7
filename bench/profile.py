"""`make profile`: where one daphne process of the product spends its CPU, under one of the bench's loads.

Starts the simulator and a fresh product process (as bench/suite.py does), puts a load on it and samples it
with py-spy meanwhile (`--gil`: only the thread holding the GIL, so the samples are the process's Python work).
Writes the collapsed stacks and a flame graph into bench/results/profile-<time>/, and prints the functions
with the most samples of their own and, for the product's own modules, with the most samples under them.

    uv run python bench/profile.py [--load steady|fixed|burst] [--streams 200] [--seconds 8]
    make profile PROFILE_ARGS="--load fixed"

- steady: `--streams` answers of 500 tokens, started over 2 s; sampled once every stream is under way.
- fixed: one-token answers one after another on one socket; the fixed cost of an answer.
- burst: `--streams` distinct users connect and send within 2 s; sampled from the first send.
"""

import argparse
import asyncio
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

from bench import load, servers, suite  # noqa: E402
from bench.load import Socket, Stream  # noqa: E402


def spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    py_spy = str(Path(sys.executable).parent / "py-spy")
    command = [py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250", "--gil"]
    command += ["--format", "raw", "--output", str(out), "--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def steady(port: int, sessions: list[str], streams: int, seconds: float, pid: int, out: Path) -> None:
    url, origin = f"ws://127.0.0.1:{port}/ws/chat/", f"http://127.0.0.1:{port}"
    sockets = [Socket(url, origin, sessions[i % len(sessions)]) for i in range(streams)]
    await asyncio.gather(*(socket.open() for socket in sockets))
    results = [Stream() for _ in range(streams)]
    window: list[float] = []

    async def sample() -> None:
        await asyncio.sleep(3.0)  # every answer started, every first token out
        before, began = servers.usage(pid).cpu, time.perf_counter()
        recorder = spy(pid, seconds, out)
        await asyncio.to_thread(recorder.wait)
        window.extend((began, time.perf_counter(), servers.usage(pid).cpu - before))

    sampler = asyncio.create_task(sample())
    await load.run_staggered(streams, 2.0, lambda i: sockets[i].answer(suite.model(500), f"bench {i}", results[i]))
    await sampler
    await asyncio.gather(*(socket.close() for socket in sockets))
    began, ended, cpu = window
    ends = [load.token_ends(f"bench {i}", suite.options(500)) for i in range(streams)]
    arrivals = [load.token_arrivals(stream, ends[i]) for i, stream in enumerate(results)]
    tokens = sum(1 for times in arrivals for moment in times if began <= moment <= ended)
    per_token = cpu / tokens * 1e6
    print(f"sampled window: {tokens} tokens, {cpu:.2f} s of CPU, {per_token:.1f} µs per token (py-spy running)")


async def fixed(port: int, sessions: list[str], seconds: float, pid: int, out: Path) -> None:
    socket = Socket(f"ws://127.0.0.1:{port}/ws/chat/", f"http://127.0.0.1:{port}", sessions[0])
    await socket.open()
    before = servers.usage(pid).cpu
    recorder = spy(pid, seconds, out)
    index = 0
    while recorder.poll() is None:
        await socket.answer("dev:tokens=1,ttft=0", f"bench {index}", Stream())
        index += 1
    cpu = servers.usage(pid).cpu - before
    await socket.close()
    print(f"{index} answers in {seconds:g} s: {cpu / index * 1000:.2f} ms of CPU each (py-spy running)")


async def burst(port: int, sessions: list[str], seconds: float, pid: int, out: Path) -> None:
    url, origin = f"ws://127.0.0.1:{port}/ws/chat/", f"http://127.0.0.1:{port}"
    sockets = [Socket(url, origin, session) for session in sessions]

    async def one(index: int) -> None:
        await sockets[index].open()
        await sockets[index].answer(suite.model(200), f"bench {index}", Stream())

    recorder = spy(pid, seconds, out)
    await load.run_staggered(len(sockets), 2.0, one)
    await asyncio.to_thread(recorder.wait)
    await asyncio.gather(*(socket.close() for socket in sockets))


def report(collapsed: Path, top: int = 40) -> None:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        total += count
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]  # functions, not lines
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    print(f"\n{total} samples; most samples of their own:")
    for frame, count in own.most_common(top):
        print(f"  {100 * count / total:5.1f} %  {frame}")
    print("\nfunctions with the most samples under them:")
    for frame, count in inclusive.most_common(top):
        print(f"  {100 * count / total:5.1f} %  {frame}")


async def main(kind: str, streams: int, seconds: float, out: Path) -> None:
    with tempfile.TemporaryDirectory() as workdir, suite.database(workdir) as (database_url, _):
        env = suite.base_env(database_url)
        servers.manage(env, "migrate", "--noinput", "-v0")
        upstream = servers.devllm(env, ttft=suite.TTFT, tps=suite.TPS, tokens=250).start()
        setup = suite.Setup(env, upstream, f"http://127.0.0.1:{upstream.port}/v1", "")
        try:
            app = suite.start_app(setup)
            try:
                sessions = servers.sessions(env, streams + 1)
                await suite.warm_up(app.port, sessions[-1])
                collapsed = out / "stacks.txt"
                if kind == "steady":
                    await steady(app.port, sessions[:50], streams, seconds, app.pid, collapsed)
                elif kind == "fixed":
                    await fixed(app.port, sessions, seconds, app.pid, collapsed)
                else:
                    await burst(app.port, sessions[:streams], seconds, app.pid, collapsed)
            finally:
                app.stop()
        finally:
            upstream.stop()
    report(collapsed)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", choices=("steady", "fixed", "burst"), default="steady")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    out = ROOT / "bench" / "results" / f"profile-{args.load}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    asyncio.run(main(args.load, args.streams, args.seconds, out))
    print(f"\nstacks: {out.relative_to(ROOT)}/stacks.txt ({time.monotonic() - began:.0f} s)")
