"""RabbitMQ for the worker tests: a virtual host of each test's own, made and deleted with
``rabbitmqctl`` (no management plugin), and what a test reads of it or does to it.

A virtual host is RabbitMQ's namespace: its own exchanges, queues and connections, so tests (and
other people's test runs on the same server) never see each other's messages. ``rabbitmqctl``
talks to the local node and needs its Erlang cookie: it works as root (CI) or as the
``rabbitmq`` user. Each call costs about 0.4 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from kombu import Connection

from entrypoints.processes import ChildProcess, free_port, wait_until

AMQP_ENV = "AFTERSALES_TEST_AMQP_URL"
#: The server's default virtual host ("/", written "//" in a URL); tests only take its address.
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"

#: Seconds one ``rabbitmqctl`` call may take (it starts an Erlang VM: 0.4 s when idle).
CTL_TIMEOUT_S = 60


class RabbitUnavailable(Exception):
    """The server does not answer, or ``rabbitmqctl`` cannot manage it from here."""


def ctl(*args: str) -> str:
    """``rabbitmqctl ARGS`` (quiet); its standard output. Raises ``RabbitUnavailable``."""
    if shutil.which("rabbitmqctl") is None:
        raise RabbitUnavailable("rabbitmqctl is not installed")
    try:
        done = subprocess.run(
            ["rabbitmqctl", "--quiet", *args],
            capture_output=True,
            text=True,
            timeout=CTL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise RabbitUnavailable(f"rabbitmqctl {args[0]}: {error}") from error
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise RabbitUnavailable(f"rabbitmqctl {args[0]} failed: {' '.join(why)[:300]}")
    return done.stdout


def check_server(url: str) -> None:
    """Connect once to ``url`` and run one ``rabbitmqctl`` command; raise if either fails."""
    try:
        with Connection(url, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
    except Exception as error:  # kombu raises the transport's own errors, OSError among them
        raise RabbitUnavailable(f"RabbitMQ at {url} does not answer ({error!r})") from error
    ctl("list_vhosts")


def with_vhost(url: str, vhost: str) -> str:
    """``url`` with ``vhost`` as its virtual host (the path, percent-encoded)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))


def ready_in(url: str, queue: str) -> int:
    """Messages waiting in ``queue`` at ``url`` (a passive declare over AMQP: milliseconds,
    where ``rabbitmqctl`` takes a second on a busy machine); 0 if the queue does not exist."""
    with Connection(url, connect_timeout=3) as connection:
        try:
            return int(connection.default_channel.queue_declare(queue, passive=True)[1])
        except connection.channel_errors:  # NOT_FOUND closes the channel
            return 0


@dataclass
class Vhost:
    """A virtual host of one test, open to the URL's user; ``delete`` removes it and
    everything in it (queues, messages, the connections still open to it)."""

    server_url: str
    name: str

    @classmethod
    def create(cls, server_url: str) -> Vhost:
        vhost = cls(server_url, f"aftersales-test-{uuid.uuid4().hex[:12]}")
        ctl("add_vhost", vhost.name)
        user = urlsplit(server_url).username or "guest"
        ctl("set_permissions", "-p", vhost.name, user, ".*", ".*", ".*")
        return vhost

    @property
    def url(self) -> str:
        return with_vhost(self.server_url, self.name)

    def delete(self) -> None:
        ctl("delete_vhost", self.name)

    def queues(self) -> dict[str, tuple[int, int]]:
        """Each queue's messages (ready, delivered but unacknowledged)."""
        counts: dict[str, tuple[int, int]] = {}
        output = ctl(
            "list_queues", "-p", self.name, "name", "messages_ready", "messages_unacknowledged"
        )
        for line in output.splitlines():
            fields = line.split("\t")
            if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                counts[fields[0]] = (int(fields[1]), int(fields[2]))
        return counts

    def ready(self, queue: str) -> int:
        return ready_in(self.url, queue)

    def set_policy(self, name: str, pattern: str, definition: str) -> None:
        """A queue policy (``definition`` is its JSON) on the queues ``pattern`` matches."""
        ctl("set_policy", "-p", self.name, "--apply-to", "queues", name, pattern, definition)

    def close_connections(self, reason: str = "closed by the test") -> int:
        """Close every client connection to this virtual host from the server's side, as a
        network cut or a node going away would; how many there were."""
        closed = 0
        for line in ctl("list_connections", "pid", "vhost").splitlines():
            fields = line.split("\t")
            if len(fields) == 2 and fields[1] == self.name:
                ctl("close_connection", fields[0], reason)
                closed += 1
        return closed


# -- a RabbitMQ node of the test's own ----------------------------------------------------------

#: Where a test's own node listens (AMQP; Erlang distribution at the same port + ``DIST_OFFSET``),
#: apart from the shared server (5672).
NODE_PORTS = (5690, 5790)
DIST_OFFSET = 20000
#: ``rabbitmq-server`` itself, not Debian's wrapper (which switches to the ``rabbitmq`` user and
#: so could not write in the test's folder).
SERVER_BINARY = "/usr/lib/rabbitmq/bin/rabbitmq-server"


def can_run_a_node() -> str | None:
    """Why this process cannot start a RabbitMQ node of its own, or None if it can."""
    if not Path(SERVER_BINARY).exists():
        return f"{SERVER_BINARY} is not installed"
    if os.geteuid() != 0:
        return "a RabbitMQ node of the test's own runs as root (its files are the test's)"
    return None


class RabbitNode:
    """A RabbitMQ node in a folder of the test (data, logs, Erlang cookie), on a free port: a
    test may kill it and start it again without touching the shared server. Its data survives
    a restart, as a production node's disk does."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port(*NODE_PORTS)
        self.name = f"aftersales-test-{uuid.uuid4().hex[:8]}@localhost"
        self.process: ChildProcess | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self, timeout: float = 60.0) -> None:
        """Start the node (again) and wait until it takes an AMQP connection."""
        self.starts += 1
        (self.folder / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (self.folder / "enabled_plugins").write_text("[].\n")
        env = {
            **os.environ,
            "HOME": str(self.folder),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.port + DIST_OFFSET),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.folder / "pid"),
        }
        log = self.folder / f"node-{self.starts}.out"
        self.process = ChildProcess([SERVER_BINARY], log, env=env).start()
        wait_until(self._answers, f"RabbitMQ node {self.name} to start", timeout, 0.2)

    def _answers(self) -> bool:
        if self.process is not None and not self.process.alive():
            raise RabbitUnavailable(f"the node exited with {self.process.returncode}")
        try:
            with Connection(self.url, connect_timeout=1) as connection:
                connection.ensure_connection(max_retries=1, timeout=1)
            return True
        except Exception:  # refused while it boots
            return False

    def kill(self) -> None:
        """SIGKILL the node: no flush, no goodbye to its clients (a power cut, an OOM kill)."""
        if self.process is not None:
            self.process.kill()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace_s=20)

    def ready(self, queue: str) -> int:
        return ready_in(self.url, queue)
