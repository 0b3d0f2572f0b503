"""RabbitMQ for the worker tests: a virtual host of each test's own, made and deleted with
``rabbitmqctl`` (no management plugin), and what a test reads of it or does to it.

A virtual host is RabbitMQ's namespace: its own exchanges, queues and connections, so tests (and
other people's test runs on the same server) never see each other's messages. ``rabbitmqctl``
talks to the local node and needs its Erlang cookie: it works as root (CI) or as the
``rabbitmq`` user. Each call costs about 0.4 s.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

from kombu import Connection

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
