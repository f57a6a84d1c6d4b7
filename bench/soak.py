"""`make soak`: the production topology under steady load and faults, for a bounded time, on loopback.

Two daphne processes (deploy/chat@.service's command line) behind nginx (deploy/nginx.conf), on a private
PostgreSQL and a private Redis, against the dev upstream (a simulator). Every user is a different account with
its own session and one socket, as a browser tab: it sends, reads the answer to its `done`, thinks a moment and
sends again (three turns a conversation, then a new one). Meanwhile:
- one daphne process is SIGKILLed and started again every `SOAK_KILL_EVERY` seconds (120), the two in turn;
  its clients reconnect through nginx, re-send what was not acknowledged (`retry: true`) and resume the rest;
- Redis is stopped once for `SOAK_REDIS_DOWN` seconds (3);
- a fifth of the answers are dropped by their client mid-stream (the TCP connection aborted) and resumed on a
  new socket, wherever nginx sends it.

At the end it reports, from the clients and from PostgreSQL: answers complete / interrupted / other / stuck in
`streaming`, resumes, answers whose saved text differs from what their client was shown (or, when complete,
from the model's text), gaps or duplicates a client saw, answers lost to the Redis outage, the longest freeze
of a live answer after Redis returned, and the watchers, sockets and event-group subscriptions each process
still holds once every client has gone. Expected: 0 stuck, 0 mismatches, 0 lost, a freeze ≤ 1 s, 0 left.

    SOAK_SECONDS=600 SOAK_USERS=160 uv run python bench/soak.py

The default load, 160 users, is about 80 % of what the benchmark measured one process to carry (200 live
streams within 100 ms of added p99): on this 2-core machine the two processes share the cores with nginx,
PostgreSQL, Redis, the simulator and this client, so the deployment as a whole has about one process's worth.
"""

import asyncio
import json
import os
import random
import re
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import httpx  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

from bench import servers  # noqa: E402
from devllm.simulator import DevOptions, answer_text, parse_model  # noqa: E402
from tests.deploy.harness import Fleet, Nginx, PrivatePostgres, PrivateRedis  # noqa: E402
from tests.support import ChatSocket, collect_static  # noqa: E402

SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
USERS = int(os.environ.get("SOAK_USERS", "160"))
KILL_EVERY = float(os.environ.get("SOAK_KILL_EVERY", "120"))
REDIS_DOWN = float(os.environ.get("SOAK_REDIS_DOWN", "3"))
DROP_SHARE = 0.2
MODEL = "dev:tokens=150"
TURNS_PER_CONVERSATION = 3
ANSWER_DEADLINE = 150.0  # a client gives an answer up (and counts it "unfinished") after this long
BROKEN = (ConnectionClosed, OSError, TimeoutError, InvalidStatus)


@dataclass
class Answer:
    request: str
    prompt: str
    sent: float
    id: str | None = None
    status: str | None = None  # from the `done` the client got, None if it never got one
    text: str = ""
    drops: int = 0  # deliberate: the client aborted its connection mid-answer
    breaks: int = 0  # the server side went away (a killed process), or a resend was needed
    resumes: int = 0
    violation: str | None = None  # a gap, duplicate or misplaced block the client saw
    refused: str | None = None  # an error code the send got for good
    # When each delta arrived, and on which of the client's connections (to measure freezes on one socket).
    arrivals: list[tuple[float, int]] = field(default_factory=list)


@dataclass
class Faults:
    kills: list[tuple[float, int]] = field(default_factory=list)  # (when, process index)
    redis_down: float | None = None
    redis_back: float | None = None


class Tab:
    """One user's browser tab: a socket that it reconnects through nginx whenever it breaks."""

    def __init__(self, nginx: Nginx, session: str) -> None:
        self.nginx, self.session = nginx, session
        self.chat: ChatSocket | None = None
        self.connection = 0
        # What the client has of each message (text, HTML, how much of the text the HTML covers), whichever
        # socket brought it: every new socket continues from it, as the browser's page does.
        self.texts: dict[str, str] = {}
        self.html: dict[str, str] = {}
        self.rendered: dict[str, int] = {}

    async def socket(self, deadline: float) -> ChatSocket:
        while self.chat is None:
            if time.monotonic() > deadline:
                raise TimeoutError("could not reconnect")
            try:
                chat = await ChatSocket.connect(self.nginx, self.session)
            except (*BROKEN, AssertionError, KeyError):
                await asyncio.sleep(0.5 + random.random())
                continue
            chat.texts, chat.html, chat.rendered = self.texts, self.html, self.rendered
            self.connection += 1
            self.chat = chat
        return self.chat

    def drop(self) -> None:
        """Aborts the socket's connection (if it is not gone already); the next `socket()` opens another."""
        if self.chat is not None:
            self.chat.ws.transport.abort()
            self.chat = None

    async def ask(self, answer: Answer, conversation: str | None) -> str | None:
        """Sends until the answer exists, follows it to its `done`; returns the conversation."""
        deadline = answer.sent + ANSWER_DEADLINE
        retry = False
        while answer.id is None:
            chat = await self.socket(deadline)
            frame: dict[str, Any] = {"type": "send", "id": answer.request, "content": answer.prompt}
            frame |= {"model": MODEL, "conversation": conversation, **({"retry": True} if retry else {})}
            try:
                await chat.send(frame)
                event = await chat.recv_until(
                    lambda e: (
                        e.get("ref") == answer.request
                        and (e["type"] == "error" or (e["type"] == "message" and e["message"]["role"] == "assistant"))
                    ),
                    timeout=30,
                )
            except BROKEN:
                answer.breaks += 1
                self.drop()
                retry = True
                continue
            except AssertionError:
                answer.violation = "while sending: " + self.describe(chat, answer)
                self.drop()  # the user goes on in a new conversation, on a new socket
                return None
            if event["type"] == "error":
                if event["code"] in ("unavailable", "internal_error") and time.monotonic() < deadline:
                    answer.breaks += 1
                    retry = True
                    await asyncio.sleep(0.5)
                    continue
                answer.refused = event["code"]
                return conversation
            answer.id, conversation = event["message"]["id"], event["message"]["conversation"]
        drop_at = random.randint(5, 120) if random.random() < DROP_SHARE else None
        while time.monotonic() < deadline:
            chat = await self.socket(deadline)
            try:
                done = await self._follow(chat, answer, answer.id, drop_at)
            except AssertionError:
                answer.violation = "while following: " + self.describe(chat, answer)
                self.drop()
                return None
            except BROKEN:
                answer.breaks += 1
            else:
                if done is not None:
                    answer.status = done["status"]
                    answer.text = chat.texts.get(answer.id, "")
                    del chat.events[:-400]  # bounded, and enough to explain a violation
                    return conversation
                answer.drops += 1  # the client aborted on purpose, once
                drop_at = None
            self.drop()
            chat = await self.socket(deadline)
            answer.resumes += 1
            have = chat.texts.get(answer.id, "")
            resume = {"type": "resume", "message": answer.id, "offset": len(have)}
            try:
                await chat.send(resume | {"rendered": chat.rendered.get(answer.id, 0)})
            except BROKEN:
                continue
        return conversation

    @staticmethod
    def describe(chat: ChatSocket, answer: Answer) -> str:
        """What the event that broke the client's checks was (ChatSocket records it before checking it)."""
        event = chat.events[-1] if chat.events else {}
        which = "this answer" if event.get("message") == answer.id else "another message"
        have = len(chat.texts.get(str(event.get("message")), ""))
        fields = {key: event.get(key) for key in ("type", "offset", "length", "status")}
        key = event.get("message")
        about = [
            _brief(earlier)
            for earlier in chat.events
            if earlier.get("message") == key
            or (isinstance(earlier.get("message"), dict) and earlier["message"].get("id") == key)
        ]
        recent = [_brief(earlier) for earlier in chat.events[-12:]] + ["about it:", *about[-20:]]
        return f"{fields} for {which} ({event.get('message')}), the client had {have} characters; before: {recent}"

    async def _follow(self, chat: ChatSocket, answer: Answer, key: str, drop_at: int | None) -> dict[str, Any] | None:
        """Reads to the answer's `done`; None when the client drops the socket on purpose (at `drop_at` deltas)."""
        while True:
            event = await chat.recv(timeout=30)
            if event["type"] == "delta" and event["message"] == key:
                answer.arrivals.append((time.monotonic(), self.connection))
                if drop_at is not None and len(answer.arrivals) >= drop_at:
                    return None
            elif event["type"] == "done" and event["message"] == key:
                return event


def _brief(event: dict[str, Any]) -> str:
    """One event in a few characters, for a violation's report."""
    message = event.get("message")
    if isinstance(message, dict):
        role, key, status = message.get("role"), str(message.get("id"))[:8], message.get("status")
        message = f"{role} {key} {status} {len(message.get('content', ''))}"
    elif isinstance(message, str):
        message = message[:8]
    extra = "".join(f" {key}={event[key]}" for key in ("offset", "length", "status", "code") if key in event)
    return f"{event.get('type')} {message}{extra}{' ref' if event.get('ref') else ''}"


async def user(nginx: Nginx, session: str, index: int, stop_at: float, answers: list[Answer]) -> None:
    tab = Tab(nginx, session)
    conversation: str | None = None
    turn = 0
    await asyncio.sleep(random.random() * 5)
    while time.monotonic() < stop_at:
        if turn % TURNS_PER_CONVERSATION == 0:
            conversation = None
        turn += 1
        prompt = f"soak user {index} turn {turn} {uuid.uuid4().hex[:8]}"
        answer = Answer(uuid.uuid4().hex, prompt, time.monotonic())
        answers.append(answer)
        conversation = await tab.ask(answer, conversation)
        if answer.refused or answer.violation:
            conversation = None
        await asyncio.sleep(0.5 + random.random())
    if tab.chat is not None:
        await tab.chat.close()


async def faults_schedule(fleet: Fleet, redis: PrivateRedis, stop_at: float, faults: Faults, logs: list[str]) -> None:
    """SIGKILL and restart a process every KILL_EVERY seconds, the two in turn; one Redis outage."""
    began = time.monotonic()
    redis_at = began + min(1.5 * KILL_EVERY, SECONDS / 2)
    next_kill, victim = began + KILL_EVERY, 0
    while time.monotonic() < stop_at - 5:
        now = time.monotonic()
        if faults.redis_down is None and now >= redis_at:
            await asyncio.to_thread(redis.stop)
            faults.redis_down = time.monotonic()
            print(f"  {now - began:5.0f} s: Redis stopped for {REDIS_DOWN:.0f} s", flush=True)
            await asyncio.sleep(REDIS_DOWN)
            await asyncio.to_thread(redis.start)
            faults.redis_back = time.monotonic()
        elif now >= next_kill:
            server = fleet.processes[victim]
            if server.process is not None:
                server.process.send_signal(signal.SIGKILL)
                logs.append(server.output())
            faults.kills.append((time.monotonic(), victim))
            print(f"  {now - began:5.0f} s: process {victim} SIGKILLed, starting it again", flush=True)
            await asyncio.to_thread(fleet.restart, victim)
            next_kill, victim = next_kill + KILL_EVERY, 1 - victim
        await asyncio.sleep(0.2)


async def leftovers(fleet: Fleet) -> dict[str, float]:
    """The gauges that must read zero on every process once every client has gone."""
    names = ("chat_watchers_active", "chat_sockets_open", "chat_bus_subscriptions", "chat_generations_active")
    totals = dict.fromkeys(names, 0.0)
    async with httpx.AsyncClient() as client:
        for server in fleet.processes:
            text = (await client.get(f"{server.origin}/metrics")).text
            for line in text.splitlines():
                name, _, value = line.partition(" ")
                if name in totals:
                    totals[name] += float(value)
    return totals


def freeze_after_redis(answers: list[Answer], faults: Faults) -> float:
    """The longest a live answer waited for its next delta, on one open socket, once Redis was back."""
    back = faults.redis_back
    if back is None:
        return float("nan")
    longest = 0.0
    for answer in answers:
        for (before, connection), (after, same) in zip(answer.arrivals, answer.arrivals[1:], strict=False):
            if connection == same and after > back and before < back + 5:
                longest = max(longest, after - max(before, back))
    return longest


def saved(postgres: PrivatePostgres) -> dict[str, tuple[str, str]]:
    rows = postgres.query("SELECT id::text, status, content FROM conversations_message WHERE role = 'assistant'")
    return {str(key).replace("-", ""): (str(status), str(content)) for key, status, content in rows}


async def wait_for_sweep(postgres: PrivatePostgres, limit: float) -> int:
    """Answers of a killed process are swept to `interrupted` by the survivors: waits up to `limit` seconds for
    no row to be left `streaming`; returns how many still are."""
    deadline = time.monotonic() + limit
    while True:
        [(streaming,)] = postgres.query("SELECT count(*) FROM conversations_message WHERE status = 'streaming'")
        if not streaming or time.monotonic() > deadline:
            return int(str(streaming))
        await asyncio.sleep(1)


def report(answers: list[Answer], faults: Faults, rows: dict[str, tuple[str, str]], **extra: Any) -> dict[str, Any]:
    defaults = DevOptions()
    statuses: dict[str, int] = {}
    for status, _ in rows.values():
        statuses[status] = statuses.get(status, 0) + 1
    mismatched, wrong_model_text, unfinished = [], [], []
    for answer in answers:
        if answer.id is None or answer.refused or answer.violation:
            continue
        if answer.status is None:
            unfinished.append(answer.id)
            continue
        status, content = rows.get(answer.id.replace("-", ""), ("missing", ""))
        if status != answer.status or content != answer.text:
            mismatched.append(answer.id)
        model_text = answer_text([{"role": "user", "content": answer.prompt}], parse_model(MODEL, defaults)[1])
        if answer.status == "complete" and answer.text != model_text:
            wrong_model_text.append(answer.id)
    outage = (faults.redis_down or 0.0, (faults.redis_back or 0.0) + 5)
    during = [answer for answer in answers if outage[0] <= answer.sent <= outage[1]]
    lost = [a for a in during if a.refused or a.status in (None, "interrupted", "error")]
    return {
        "answers_sent": len(answers),
        "answers_saved_by_status": statuses,
        "client_done_by_status": _count(answer.status for answer in answers if answer.status),
        "unfinished_on_a_client": len(unfinished),
        "refused_sends": _count(answer.refused for answer in answers if answer.refused),
        "protocol_violations": [answer.violation for answer in answers if answer.violation],
        "saved_differs_from_client": len(mismatched),
        "complete_differs_from_model": len(wrong_model_text),
        "dropped_and_resumed": sum(answer.drops for answer in answers),
        "resumes": sum(answer.resumes for answer in answers),
        "resumes_after_a_process_died": sum(answer.resumes - answer.drops for answer in answers),
        "sends_repeated_after_a_break": sum(1 for answer in answers if answer.breaks and answer.id),
        "answers_sent_during_redis_outage": len(during),
        "lost_to_redis_outage": len(lost),
        "longest_freeze_after_redis_returned_s": round(freeze_after_redis(answers, faults), 3),
        "kills": len(faults.kills),
        **extra,
    }


def digest(logs: list[str]) -> dict[str, Any]:
    """What the processes logged at WARNING and above, by logger and message (ids taken out), and the last
    line of each traceback: where to look when a count above is not what it should be."""
    records = _count(
        re.sub(r"[0-9a-f]{8}-?[0-9a-f-]{20,}|\d+", "…", f"{match[1]} {match[2]}: {match[3]}")[:140]
        for log in logs
        for match in re.finditer(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) (\S+) (.*)$", log, re.MULTILINE)
    )
    errors = _count(
        line[:140] for log in logs for line in log.splitlines() if re.match(r"^[\w.]+(Error|Exception|Exit)\b", line)
    )
    return {
        "answers_taken_over": sum(log.count("took over an answer") for log in logs),
        "records": dict(sorted(records.items(), key=lambda item: -item[1])),
        "exceptions": dict(sorted(errors.items(), key=lambda item: -item[1])),
    }


def _count(values: Any) -> dict[str, int]:
    counted: dict[str, int] = {}
    for value in values:
        counted[value] = counted.get(value, 0) + 1
    return counted


async def main() -> dict[str, Any]:
    static_root = tempfile.mkdtemp(prefix="soak-static-")
    collect_static(static_root)
    postgres, redis = PrivatePostgres().start(), PrivateRedis().start()
    upstream = servers.devllm({**os.environ}, ttft=0.3, tps=50.0, tokens=150).start()
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "LLM_", "CHAT_"))},
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "DJANGO_DEBUG": "0",
        "SECRET_KEY": "soak-only-" + uuid.uuid4().hex,
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "0",
        "SECURE_COOKIES": "0",
        "SECURE_HSTS_SECONDS": "0",
        "DATABASE_URL": postgres.url,
        "REDIS_URL": redis.url,
        "CHANNEL_PREFIX": f"soak-{uuid.uuid4().hex[:8]}",
        "STATIC_ROOT": static_root,
        "LLM_BASE_URL": f"http://127.0.0.1:{upstream.port}/v1",
        "LLM_MODELS": "dev",
        "LLM_SIMULATOR": "1",
        "LOG_LEVEL": "WARNING",
    }
    fleet: Fleet | None = None
    nginx: Nginx | None = None
    try:
        servers.manage(env, "migrate", "--noinput", "-v0")
        sessions = servers.sessions(env, USERS)
        fleet = Fleet(env, 2).start()
        nginx = Nginx([server.port for server in fleet.processes], static_root).start()
        print(f"soak: {USERS} users for {SECONDS:.0f} s, a process killed every {KILL_EVERY:.0f} s", flush=True)
        answers: list[Answer] = []
        faults = Faults()
        began = time.monotonic()
        stop_at = began + SECONDS
        clients = [user(nginx, session, index, stop_at, answers) for index, session in enumerate(sessions)]
        logs: list[str] = []
        await asyncio.gather(faults_schedule(fleet, redis, stop_at, faults, logs), *clients)
        print(f"  {time.monotonic() - began:5.0f} s: every client has gone", flush=True)
        stuck = await wait_for_sweep(postgres, 60)
        await asyncio.sleep(2)
        left = await leftovers(fleet)
        logs += [server.output() for server in fleet.processes]
        server_log = digest(logs)
        return report(
            answers, faults, saved(postgres), stuck_streaming=stuck, left_on_processes=left, server_log=server_log
        )
    finally:
        if nginx is not None:
            nginx.stop()
        if fleet is not None:
            fleet.stop()
        upstream.stop()
        redis.stop()
        postgres.cleanup()


if __name__ == "__main__":
    results = asyncio.run(main())
    out = ROOT / "bench" / "results" / f"soak-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"results: {out.relative_to(ROOT)}")
