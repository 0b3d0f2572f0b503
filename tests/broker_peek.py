"""Read what waits in a broker queue, for tests that check a message was really sent."""

from __future__ import annotations

from config.settings import Settings
from tasks.app import create_app


def queued_task_names(settings: Settings, queue_name: str = "celery") -> list[str]:
    """Takes every message waiting in ``queue_name`` (they are consumed) and returns the names
    of their tasks, oldest first."""
    names: list[str] = []
    with create_app(settings).connection_for_read() as connection:
        queue = connection.SimpleQueue(queue_name, no_ack=True)
        try:
            while True:
                names.append(queue.get(block=False).headers["task"])
        except queue.Empty:
            return names
        finally:
            queue.close()
