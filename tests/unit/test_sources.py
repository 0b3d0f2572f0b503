"""Producer sources and their kinds: the defaults, an operator's file over them, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.errors import SetupError
from config.settings import Settings
from config.sources import SourceKind, default_sources, load_sources
from entrypoints.composition import build_sources


def test_the_defaults_name_one_source_per_kind() -> None:
    assert default_sources().sources == {
        "sf-express": SourceKind.CARRIER,
        "wechat-pay": SourceKind.PAYMENT,
        "merchant-portal": SourceKind.MERCHANT_PORTAL,
        "buyer-app": SourceKind.BUYER_APP,
        "order-system": SourceKind.ORDERS,
    }


def test_a_file_adds_and_changes_sources_over_the_defaults(tmp_path: Path) -> None:
    # given an operator's file adding a carrier and making the portal a buyer app
    path = tmp_path / "sources.toml"
    path.write_text('[sources]\nyto = "carrier"\nmerchant-portal = "buyer_app"\n', "utf-8")
    # when loaded
    sources = load_sources(path)
    # then both apply and the other defaults stay
    assert sources.kind_of("yto") is SourceKind.CARRIER
    assert sources.refusal("merchant-portal", "merchant.approved") is not None
    assert sources.kind_of("wechat-pay") is SourceKind.PAYMENT


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[sources]\nyto = "truck"\n', "sources.yto"),
        ("[carriers]\n", "only [sources]"),
        ("[sources\n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_a_setup_error(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "sources.toml"
    path.write_text(text, "utf-8")
    with pytest.raises(SetupError, match=says.replace("[", r"\[")):
        build_sources(Settings(sources_file=path))
