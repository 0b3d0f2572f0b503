"""The console's trigger forms come from the payload models, and its sessions expire."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from entrypoints.http.console.session import SessionSigner, new_session
from entrypoints.http.console.trigger_forms import data_from, form_for
from workflow.errors import InvalidInput

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


def test_a_trigger_form_has_one_input_per_scalar_field_and_json_for_lists() -> None:
    ship_back = form_for("ship_back")
    assert [(f.name, f.kind, f.required) for f in ship_back.fields] == [
        ("tracking_no", "text", True),
        ("carrier", "text", False),
    ]
    receipt = form_for("confirm_receipt")
    assert receipt.json_fields == ["received"]
    assert [f.name for f in receipt.fields] == ["note"]
    assert form_for("approve").fields == []


def test_form_values_become_the_triggers_data() -> None:
    form = {"data.tracking_no": " SF1 ", "data.carrier": "", "reason": "x"}
    assert data_from(form, "ship_back") == {"tracking_no": "SF1"}
    received = {"data_json": '{"received": [{"sku": "a", "quantity": 1}]}', "data.note": "ok"}
    assert data_from(received, "confirm_receipt") == {
        "note": "ok",
        "received": [{"sku": "a", "quantity": 1}],
    }
    with pytest.raises(InvalidInput):
        data_from({"data_json": '{"anything": 1}'}, "confirm_receipt")
    with pytest.raises(InvalidInput):
        data_from({"data_json": "{not json"}, "confirm_receipt")


def test_a_session_is_refused_once_expired_or_signed_with_another_key() -> None:
    signer = SessionSigner(b"k" * 32)
    cookie = signer.dump(new_session("ab" * 32, NOW, 8, "Asia/Shanghai"))
    assert signer.load(cookie, NOW + timedelta(hours=7)) is not None
    assert signer.load(cookie, NOW + timedelta(hours=8)) is None
    assert SessionSigner(b"o" * 32).load(cookie, NOW) is None
    assert signer.csrf_valid(cookie, signer.csrf_token(cookie))
    assert not signer.csrf_valid(cookie, signer.csrf_token("another session"))
