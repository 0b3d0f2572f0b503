"""Event producers and their kinds: which source may send which events (RULES.md part C).

The defaults live in ``sources.toml`` beside this file; operators lay their own file over it with
``AFTERSALES_SOURCES_FILE``. Like ``policy``, this module depends on nothing else of ours: the
domain takes ``Sources`` as a plain value.
"""

from __future__ import annotations

import tomllib
from enum import StrEnum
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_SOURCES_FILE = Path(__file__).with_name("sources.toml")


class SourceKind(StrEnum):
    """What a producer is; each kind sends the events of one prefix."""

    #: A carrier: ``parcel.*``.
    CARRIER = "carrier"
    #: The payment gateway: ``refund.*``.
    PAYMENT = "payment"
    #: The merchant portal: ``merchant.*``, for the case's own merchant.
    MERCHANT_PORTAL = "merchant_portal"
    #: The buyer app: ``buyer.*``, for the case's own buyer.
    BUYER_APP = "buyer_app"
    #: The order system: ``order.*``.
    ORDERS = "orders"

    @property
    def prefix(self) -> str:
        """The event-type prefix this kind sends, with its dot (``parcel.``)."""
        return _PREFIXES[self]


_PREFIXES = {
    SourceKind.CARRIER: "parcel.",
    SourceKind.PAYMENT: "refund.",
    SourceKind.MERCHANT_PORTAL: "merchant.",
    SourceKind.BUYER_APP: "buyer.",
    SourceKind.ORDERS: "order.",
}


class Sources(BaseModel):
    """The configured producers: source name -> kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: dict[str, SourceKind] = Field(default_factory=dict)

    def kind_of(self, source: str) -> SourceKind | None:
        return self.sources.get(source)

    def refusal(self, source: str, event_type: str) -> str | None:
        """Why ``source`` may not send ``event_type``; None when it may."""
        kind = self.kind_of(source)
        if kind is None:
            known = ", ".join(sorted(self.sources)) or "none"
            return f"source {source!r} is not a configured producer (configured: {known})"
        if not event_type.startswith(kind.prefix):
            return (
                f"source {source} is a {kind.value} and sends only {kind.prefix}* events, "
                f"not {event_type}"
            )
        return None


def load_sources(override_file: Path | None = None) -> Sources:
    """The default sources, with ``override_file``'s ``[sources]`` laid over them."""
    data = tomllib.loads(DEFAULT_SOURCES_FILE.read_text(encoding="utf-8"))
    if override_file is not None:
        extra = tomllib.loads(override_file.read_text(encoding="utf-8"))
        unknown = set(extra) - {"sources"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} (only [sources])")
        data["sources"] = {**data.get("sources", {}), **extra.get("sources", {})}
    return Sources.model_validate(data)


@cache
def default_sources() -> Sources:
    """The defaults of ``sources.toml``, for callers given no configuration (tests, demos)."""
    return load_sources()
