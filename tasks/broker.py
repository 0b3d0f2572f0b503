"""Which broker the Celery processes talk to, and how, from the two settings that name it.

``AFTERSALES_BROKER_URL`` unset means the embedded broker (``tasks.spool``) in ``<var>/broker``;
``filesystem:///some/dir`` puts it elsewhere; ``redis://`` / ``rediss://`` and ``amqp://`` /
``amqps://`` (RabbitMQ) are production (docs/workers.md, "Brokers", says when to choose which).
Any other URL goes to Celery unchanged. ``<var>`` is the folder of the SQLite database, or ``./var``
when the database is a server, so one ``var/`` holds everything a single machine keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sqlalchemy.engine import make_url

from config.settings import AMQP_SCHEMES, BrokerSettings, Settings, broker_scheme

#: Import path of the embedded transport, handed to kombu as the connection's ``transport``.
SPOOL_TRANSPORT = "tasks.spool:Transport"
SPOOL_URL = "filesystem://"


@dataclass(frozen=True)
class BrokerConfig:
    url: str
    #: An import path for kombu when the transport is not named by the URL's scheme.
    transport: str | None = None
    transport_options: dict[str, Any] = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        return self.transport == SPOOL_TRANSPORT

    @property
    def is_redis(self) -> bool:
        return broker_scheme(self.url) in ("redis", "rediss")

    @property
    def is_amqp(self) -> bool:
        return broker_scheme(self.url) in AMQP_SCHEMES


def var_dir(database_url: str) -> Path:
    """The folder for the embedded runtime's files: beside the SQLite database, else ``./var``."""
    url = make_url(database_url)
    database = url.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file:")
    if url.get_backend_name() == "sqlite" and not in_memory:
        return Path(database).expanduser().resolve().parent
    return (Path.cwd() / "var").resolve()


def broker_config(settings: Settings) -> BrokerConfig:
    broker, broker_url = settings.broker, settings.broker.url
    if broker_url is None or not broker_url.strip():
        return _spool(var_dir(settings.database.url) / "broker", broker)
    parsed = urlparse(broker_url.strip())
    if parsed.scheme == "filesystem":
        if not parsed.path or parsed.path == "/":
            return _spool(var_dir(settings.database.url) / "broker", broker)
        return _spool(Path(parsed.path), broker)
    if parsed.scheme in ("redis", "rediss"):
        return BrokerConfig(url=broker_url, transport_options=_redis_options(broker))
    if parsed.scheme in AMQP_SCHEMES:
        return BrokerConfig(url=broker_url, transport_options=amqp_options())
    return BrokerConfig(url=broker_url)


def _spool(folder: Path, broker: BrokerSettings) -> BrokerConfig:
    return BrokerConfig(
        url=SPOOL_URL,
        transport=SPOOL_TRANSPORT,
        transport_options={
            "data_folder": str(folder.expanduser().resolve()),
            "visibility_timeout": broker.visibility_timeout_s,
            "polling_interval": broker.polling_interval_s,
        },
    )


def _redis_options(broker: BrokerSettings) -> dict[str, Any]:
    timeout = broker.visibility_timeout_s
    options: dict[str, Any] = {"visibility_timeout": timeout}
    if timeout < 1000:
        # kombu scans for expired messages every 10 s x 10 polls; with a short timeout (tests)
        # that would leave a killed worker's messages waiting for minutes.
        options["unacked_restore_interval"] = max(1, timeout // 10)
        options["unacked_restore_throttle"] = 1
    if broker.key_prefix:
        options["global_keyprefix"] = broker.key_prefix
    return options


def amqp_options() -> dict[str, Any]:
    """kombu ``pyamqp`` transport options of every producer and worker on RabbitMQ."""
    # Publisher confirms: a publish returns once RabbitMQ has taken the message (for a
    # persistent message in a durable queue: written to disk) and raises if it refused it.
    # Without them ``basic.publish`` returns before the server has anything, and a message
    # lost on the way (connection cut, server crash, a refusal that closes the channel) is
    # lost without an error. Celery's own publishes declare the target queue first, so a
    # confirmed message is never an unroutable one. Cost: one round trip per publish.
    return {"confirm_publish": True}
