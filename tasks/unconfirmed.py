"""The beat task that sends events lost by the broker again (``tasks.resender``).

Only a Redis broker has a ledger (``tasks.ledger``): beat schedules the task only then.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import current_app, shared_task

from tasks.producer import INGEST_TASK
from tasks.resender import EventResender
from tasks.runtime import runtime

logger = logging.getLogger(__name__)

RESEND_TASK = "aftersales.resend_unconfirmed_events"


def _send(envelope: dict[str, Any]) -> None:
    current_app.send_task(INGEST_TASK, args=[envelope])


@shared_task(name=RESEND_TASK, bind=True, ignore_result=True)
def resend_unconfirmed_events_task(self: Any) -> int:
    services = runtime()
    if services.unconfirmed is None:
        return 0
    resender = EventResender(
        services.unconfirmed, services.events, _send, services.worker.event_resend_after_s
    )
    report = resender.run()
    if report.resent or report.dropped:
        logger.warning(
            "events not processed %.0f s after they were sent: %d sent again, %d unreadable "
            "ledger entries dropped (%d confirmed)",
            services.worker.event_resend_after_s,
            report.resent,
            report.dropped,
            report.confirmed,
        )
    return report.resent
