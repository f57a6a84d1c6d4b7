"""The processes a benchmark runs on loopback, and what /proc says about them.

Every process here is started and stopped by the suite: the dev upstream (the simulator, in a process of its
own so it does not share the load client's interpreter), daphne serving the project or the bare relay, and
the deployment harness's nginx, Redis and PostgreSQL for the two-process scenario.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def wait_port(port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited early with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port}")


@dataclass(frozen=True)
class Usage:
    cpu: float  # seconds of CPU (user + system) used so far
    rss: int  # resident set size now, in bytes


def usage(pid: int) -> Usage:
    """The CPU time and memory of one process, from /proc (the load client's and simulator's not included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return Usage(cpu=(utime + stime) / CLOCK_TICKS, rss=rss_pages * PAGE_SIZE)


def usage_of(pids: list[int]) -> Usage:
    """The CPU and memory of several processes together (a fleet)."""
    each = [usage(pid) for pid in pids]
    return Usage(cpu=sum(one.cpu for one in each), rss=sum(one.rss for one in each))


class Process:
    """A subprocess of the benchmark whose output goes to a temporary log."""

    def __init__(self, command: list[str], env: dict[str, str], port: int, name: str) -> None:
        self.command, self.env, self.port, self.name = command, env, port, name
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.process.pid

    def start(self) -> "Process":
        self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, self.process, self.name)
        except SystemExit:
            raise SystemExit(f"{self.name} did not start:\n{Path(self.log.name).read_text(errors='replace')}") from None
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


def devllm(env: dict[str, str], *, ttft: float, tps: float, tokens: int) -> Process:
    """The dev upstream (simulator) as its own process; its base URL is http://127.0.0.1:<port>/v1."""
    port = free_port()
    command = [
        *[sys.executable, "manage.py", "devllm", "--port", str(port)],
        *["--ttft", str(ttft), "--tps", str(tps), "--tokens", str(tokens)],
    ]
    return Process(command, env, port, "devllm")


def daphne(env: dict[str, str], application: str = "chatproject.asgi:application", *, uvloop: bool = True) -> Process:
    """daphne as deployed (`python -m chatproject.serve`: on uvloop), or plain daphne on asyncio's own loop."""
    port = free_port()
    launcher = [sys.executable, "-m", "chatproject.serve"] if uvloop else [str(Path(sys.executable).parent / "daphne")]
    command = [*launcher, "-b", "127.0.0.1", "-p", str(port), "--access-log", "/dev/null"]
    return Process([*command, application], env, port, "daphne")


def uvicorn(env: dict[str, str], application: str = "chatproject.asgi:application") -> Process:
    """uvicorn on uvloop with its `websockets` implementation and httptools: the benchmark's comparison."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop"]
    command += ["--ws", "websockets", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    return Process([*command, application], env, port, "uvicorn")


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def sessions(env: dict[str, str], users: int) -> list[str]:
    """Logged-in session cookies for `users` new users of the benchmark's database."""
    code = (
        "import uuid; from django.contrib.auth import get_user_model; from django.test import Client\n"
        f"for _ in range({users}):\n"
        "    user = get_user_model().objects.create_user('bench-' + uuid.uuid4().hex[:12])\n"
        "    client = Client(); client.force_login(user); print(client.cookies['sessionid'].value)\n"
    )
    return manage(env, "shell", "--no-imports", "-c", code).split()[-users:]


def api_token(env: dict[str, str]) -> str:
    code = (
        "import uuid; from django.contrib.auth import get_user_model; from conversations import services\n"
        "user = get_user_model().objects.create_user('bench-api-' + uuid.uuid4().hex[:12])\n"
        "print(services.api_token_create(user=user, name='bench')[1])\n"
    )
    return manage(env, "shell", "--no-imports", "-c", code).split()[-1]


def conversations_with_history(env: dict[str, str], users: int, turns: int) -> list[tuple[str, str]]:
    """`users` new users, each logged in and with one conversation of `turns` finished turns (a question and a
    complete answer each); returns (session cookie, conversation id) per user."""
    code = (
        "import uuid; from django.contrib.auth import get_user_model; from django.test import Client\n"
        "from conversations.models import Conversation, Message\n"
        f"for _ in range({users}):\n"
        "    user = get_user_model().objects.create_user('bench-' + uuid.uuid4().hex[:12])\n"
        "    conversation = Conversation.objects.create(owner=user, title='history', model='dev')\n"
        "    Message.objects.bulk_create(\n"
        "        Message(conversation=conversation, owner=user, seq=seq, role='user' if seq % 2 else 'assistant',\n"
        "                content=f'turn {seq}: ' + 'words of an earlier turn ' * 20, status='complete')\n"
        f"        for seq in range(1, {2 * turns} + 1))\n"
        "    client = Client(); client.force_login(user)\n"
        "    print(client.cookies['sessionid'].value, conversation.pk)\n"
    )
    lines = manage(env, "shell", "--no-imports", "-c", code).strip().splitlines()[-users:]
    return [(session, conversation) for session, conversation in (line.split() for line in lines)]
