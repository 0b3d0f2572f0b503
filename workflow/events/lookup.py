"""Which case an event is about, and the copies of cases a batch of events read at its start."""

from __future__ import annotations

from dataclasses import dataclass

from workflow.errors import InvalidInput, NotFound
from workflow.events.envelope import Envelope
from workflow.model import Case, cases_by_reference
from workflow.ports import UnitOfWork


@dataclass
class BatchReads:
    """What a batch read at its start, in its transaction. A copy of a case serves the batch's
    events until one of them uses that case (or, for ``by_order``, any case of that order):
    from then on it may be stale (a pickup sets a tracking number, an ending closes the case),
    and later events read the database, where they see the batch's writes."""

    #: The cases the events name by id, with their live timers.
    by_id: dict[int, Case]
    #: The events recorded before the batch, and then the batch's own.
    recorded: set[tuple[str, str]]
    #: Every case of the orders the events name without a case id, with their live timers.
    by_order: dict[str, list[Case]]

    def drop_copies_of(self, case: Case) -> None:
        if case.id is not None:
            self.by_id.pop(case.id, None)
        self.by_order.pop(case.order_id, None)


def find_case(
    uow: UnitOfWork,
    envelope: Envelope,
    named: dict[int, Case] | None = None,
    by_order: dict[str, list[Case]] | None = None,
) -> Case:
    """The one case the envelope names: by id, else by parcel, else the order's open case.
    ``named`` (cases by id) and ``by_order`` (the cases of orders): copies read before in
    ``uow``, used instead of the database."""
    copies = by_order.get(envelope.order_id) if by_order and envelope.order_id else None

    def by_reference(order_id: str | None, tracking_no: str | None = None) -> list[Case]:
        if copies is not None:
            return cases_by_reference(copies, order_id, tracking_no)
        return uow.cases.by_reference(order_id=order_id, tracking_no=tracking_no)

    if envelope.case_id is not None:
        case = named.get(envelope.case_id) if named else None
        if case is None:
            case = uow.cases.get(envelope.case_id)
        if case is None:
            raise NotFound(f"no case {envelope.case_id}")
        if envelope.order_id is not None and envelope.order_id != case.order_id:
            raise InvalidInput(
                f"case {case.id} is of order {case.order_id}, not {envelope.order_id}", "order_id"
            )
        return case
    if envelope.tracking_no is not None:
        found = by_reference(envelope.order_id, envelope.tracking_no)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            ids = ", ".join(str(c.id) for c in found)
            raise InvalidInput(
                f"parcel {envelope.tracking_no} belongs to cases {ids}; name the case_id",
                "tracking_no",
            )
        if envelope.order_id is None:
            raise NotFound(
                f"no case has parcel {envelope.tracking_no}; send the order_id or case_id with "
                "a parcel's first event"
            )
    assert envelope.order_id is not None
    found = by_reference(envelope.order_id)
    if not found:
        raise NotFound(f"order {envelope.order_id} has no open case")
    if len(found) > 1:
        ids = ", ".join(str(c.id) for c in found)
        raise InvalidInput(
            f"order {envelope.order_id} has open cases {ids}; name the case_id or tracking_no",
            "order_id",
        )
    return found[0]
