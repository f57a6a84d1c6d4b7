"""The production deployment on loopback: private PostgreSQL and Redis servers (so tests may restart them),
two daphne processes started with deploy/chat@.service's command line, and nginx with deploy/nginx.conf.

The documented files are used as they are, with only addresses and paths substituted, and every
substitution must match: if the files change shape, the harness fails loudly instead of testing something
else.
"""

import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from tests.support import ROOT, Daphne, free_port, require

DEPLOY = ROOT / "deploy"


def _wait_port(port: int, process: subprocess.Popen[bytes] | None, what: str, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited early with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


class PrivateRedis:
    """A redis-server of the test's own, keeping nothing on disk (a restart loses every group and queue)."""

    def __init__(self) -> None:
        require("redis-server", shutil.which("redis-server") is not None)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "PrivateRedis":
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.process, "redis-server")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def restart(self, down: float) -> None:
        self.stop()
        time.sleep(down)
        self.start()


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own in a temporary folder, restartable at will."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        require("PostgreSQL server binaries", bool(bins))
        self.bin = Path(bins[-1]).parent
        self.root = Path(tempfile.mkdtemp(prefix="chat-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        # initdb refuses to run as root; as root the cluster belongs to the postgres account.
        self.as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_owner:
            shutil.chown(self.root, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/chat"

    def _run(self, *command: str) -> None:
        subprocess.run([*self.as_owner, *command], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> "PrivatePostgres":
        first = not self.data.exists()
        if first:
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.root / "log")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w", "start")
        if first:
            with psycopg.connect(self.url.replace("/chat", "/postgres"), autocommit=True) as connection:
                connection.execute("CREATE DATABASE chat")
        return self

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self, down: float) -> None:
        self.stop()
        time.sleep(down)
        self.start()

    def cleanup(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        with psycopg.connect(self.url) as connection:
            return connection.execute(sql, params).fetchall()


def daphne_command(port: int) -> list[str]:
    """The ExecStart of deploy/chat@.service for process `port`, run with this interpreter."""
    unit = (DEPLOY / "chat@.service").read_text()
    match = re.search(r"^ExecStart=(.*?)(?<!\\)$", unit, re.MULTILINE | re.DOTALL)
    assert match, "deploy/chat@.service has no ExecStart"
    words = shlex.split(match.group(1).replace("\\\n", " "))
    assert words[0].endswith("/python") and words[1:3] == ["-m", "chatproject.serve"], words
    command = [sys.executable, *words[1:]]
    ports = [index for index, word in enumerate(command) if word == "800%i"]
    assert len(ports) == 1, "the unit's port is 800%i"
    command[ports[0]] = str(port)
    return command


class Fleet:
    """Several daphne processes of one deployment, started as deploy/chat@.service starts them."""

    def __init__(self, env: dict[str, str], count: int) -> None:
        self.env = env
        self.processes = [self._new() for _ in range(count)]

    def _new(self) -> Daphne:
        server = Daphne(self.env)
        server.command = daphne_command(server.port)
        return server

    def start(self) -> "Fleet":
        for server in self.processes:
            server.start()
        return self

    def restart(self, index: int) -> Daphne:
        """Replaces process `index` (after a kill) by a new one on the same port."""
        old = self.processes[index]
        old.stop()
        server = Daphne(self.env)
        server.port = old.port
        server.command = daphne_command(server.port)
        self.processes[index] = server.start()
        return server

    def stop(self) -> None:
        for server in self.processes:
            server.stop()


class Nginx:
    """nginx running deploy/nginx.conf on a loopback port, in front of the fleet."""

    def __init__(self, ports: list[int], static_root: str) -> None:
        require("nginx", shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists())
        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.port = free_port()
        self.prefix = Path(tempfile.mkdtemp(prefix="chat-nginx-"))
        (self.prefix / "logs").mkdir()
        site = _site_config(ports, self.port, static_root)
        conf = f"""
worker_processes 1;
error_log {self.prefix}/logs/error.log warn;
pid {self.prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    include /etc/nginx/mime.types;
    access_log {self.prefix}/logs/access.log;
    client_body_temp_path {self.prefix}/body;
    proxy_temp_path {self.prefix}/proxy;
    fastcgi_temp_path {self.prefix}/fastcgi;
    uwsgi_temp_path {self.prefix}/uwsgi;
    scgi_temp_path {self.prefix}/scgi;
{site}
}}
"""
        (self.prefix / "nginx.conf").write_text(conf)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/"

    def start(self) -> "Nginx":
        config = str(self.prefix / "nginx.conf")
        test = [self.binary, "-t", "-p", str(self.prefix), "-c", config]
        check = subprocess.run(test, capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr
        command = [self.binary, "-p", str(self.prefix), "-c", config, "-g", "daemon off;"]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE)
        _wait_port(self.port, self.process, "nginx")
        return self

    def error_log(self) -> str:
        return (self.prefix / "logs" / "error.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.prefix, ignore_errors=True)


def _substitute(text: str, pattern: str, replacement: str, *, count: int = 1, flags: int = re.MULTILINE) -> str:
    result, made = re.subn(pattern, replacement, text, flags=flags)
    assert made == count, f"deploy/nginx.conf: expected {count} match(es) of {pattern!r}, found {made}"
    return result


def _site_config(ports: list[int], listen: int, static_root: str) -> str:
    """deploy/nginx.conf on a loopback port over plain HTTP: the TLS and redirect parts are left out."""
    site = (DEPLOY / "nginx.conf").read_text()
    servers = "".join(f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;\n" for port in ports)
    site = _substitute(site, r"^    server 127\.0\.0\.1:800\d .*\n", "", count=2)
    site = _substitute(site, r"^(upstream chat_daphne \{\n(?:    #.*\n)*)", rf"\g<1>{servers}")
    site = _substitute(site, r"^server \{\n    listen 80;.*?^\}\n", "", flags=re.MULTILINE | re.DOTALL)
    site = _substitute(site, r"^    listen 443 ssl;\n", f"    listen 127.0.0.1:{listen};\n")
    site = _substitute(site, r"^    listen \[::\]:443 ssl;\n", "")
    site = _substitute(site, r"^    http2 on;\n", "")
    site = _substitute(site, r"^    ssl_certificate\S* .*\n", "", count=2)
    return _substitute(site, r"alias /srv/chat/staticfiles/;", f"alias {static_root.rstrip('/')}/;")


def manage(env: dict[str, str], *args: str) -> str:
    """Runs a management command of the deployment and returns its output."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def new_session(env: dict[str, str], username: str) -> str:
    """Creates a user in the deployment's database and returns a logged-in session cookie value."""
    code = (
        "from django.contrib.auth import get_user_model; from django.test import Client; "
        f"user = get_user_model().objects.create_user({username!r}); client = Client(); client.force_login(user); "
        "print(client.cookies['sessionid'].value)"
    )
    return manage(env, "shell", "--no-imports", "-c", code).strip().splitlines()[-1]
