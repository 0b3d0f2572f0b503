"""The form of each trigger: the data fields its payload model takes, read from the model itself
(``workflow.payloads.TRIGGER_DATA``), and the way back from the submitted form to that data.

Text and number fields become inputs, yes/no fields checkboxes; fields holding lists (the
received quantities of a receipt, the missing gifts of an inspection) are given as JSON in one
text area. The payload model still validates everything: the form only shapes it.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

from pydantic.fields import FieldInfo

from workflow.definitions import REASON_REQUIRED
from workflow.errors import InvalidInput
from workflow.payloads import TRIGGER_DATA

#: Form names of a trigger's data fields: ``data.tracking_no``.
DATA_PREFIX = "data."
#: The text area for fields that are lists or objects.
JSON_FIELD = "data_json"


@dataclass(frozen=True)
class DataField:
    name: str
    label: str
    #: ``text``, ``number`` or ``checkbox``.
    kind: str
    required: bool


@dataclass(frozen=True)
class TriggerForm:
    trigger: str
    fields: list[DataField]
    #: Names of the list/object fields, given together as JSON.
    json_fields: list[str]
    #: Whoever fires it gives a reason (a rejection says why); admins always do.
    reason_required: bool


def _kind(annotation: Any) -> str | None:
    """The input for a scalar annotation (``X | None`` too); None for lists and objects."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        rest = [arg for arg in get_args(annotation) if arg is not type(None)]
        return _kind(rest[0]) if len(rest) == 1 else None
    if origin is not None and hasattr(annotation, "__metadata__"):
        return _kind(get_args(annotation)[0])
    if annotation is bool:
        return "checkbox"
    if annotation in (int, float):
        return "number"
    if annotation is str:
        return "text"
    return None


def _field(name: str, info: FieldInfo) -> DataField | None:
    kind = _kind(info.annotation)
    if kind is None:
        return None
    label = name.replace("_", " ")
    return DataField(name, label, kind, info.is_required())


def form_for(trigger: str) -> TriggerForm:
    model = TRIGGER_DATA.get(trigger)
    fields: list[DataField] = []
    json_fields: list[str] = []
    if model is not None:
        for name, info in model.model_fields.items():
            found = _field(name, info)
            if found is None:
                json_fields.append(name)
            else:
                fields.append(found)
    return TriggerForm(trigger, fields, json_fields, trigger in REASON_REQUIRED)


def data_from(form: dict[str, str], trigger: str) -> dict[str, Any]:
    """The trigger's data from a submitted form: empty inputs are left out (the model's default
    applies), numbers become numbers, JSON fields are merged in."""
    spec = form_for(trigger)
    data: dict[str, Any] = {}
    for field in spec.fields:
        raw = form.get(DATA_PREFIX + field.name, "")
        if field.kind == "checkbox":
            if field.name in {key.removeprefix(DATA_PREFIX) for key in form}:
                data[field.name] = raw in ("on", "true", "1")
            continue
        if not raw.strip():
            continue
        if field.kind == "number":
            try:
                data[field.name] = float(raw) if "." in raw else int(raw)
            except ValueError:
                where = f"data.{field.name}"
                raise InvalidInput(f"{field.label} must be a number", where) from None
        else:
            data[field.name] = raw.strip()
    extra = form.get(JSON_FIELD, "").strip()
    if extra and spec.json_fields:
        try:
            parsed = json.loads(extra)
        except ValueError as error:
            raise InvalidInput(f"the JSON data is not valid JSON: {error}", JSON_FIELD) from None
        if not isinstance(parsed, dict) or not set(parsed) <= set(spec.json_fields):
            names = ", ".join(spec.json_fields)
            raise InvalidInput(f"the JSON data is an object with only: {names}", JSON_FIELD)
        data.update(parsed)
    return data
