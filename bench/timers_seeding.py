"""The timers benchmark's seeding: pending timers in bulk, on copies of one case, laid out as
the measurement needs (how many due, when).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from rich.progress import Progress
from sqlalchemy.engine import Engine

from bench import support
from config.policy import load_policy
from persistence.db import make_engine
from persistence.unit_of_work import SqlUnitOfWorkFactory
from workflow.clock import FakeClock
from workflow.service import CaseService

SMALL = 1_000
#: Rows per seeding statement: the progress bar moves, and no statement runs for minutes.
SEED_CHUNK = 50_000


@dataclass(frozen=True)
class Layout:
    """Which seeded timers fall due when, by position among the copies (0-based)."""

    timers: int
    burst: int
    steady: int
    #: Real time when the run started; everything is placed relative to it.
    start: datetime

    @property
    def burst_at(self) -> datetime:
        return self.start + timedelta(days=1)

    @property
    def later_from(self) -> datetime:
        return self.start + timedelta(days=2)

    @property
    def steady_parked_at(self) -> datetime:
        """Where the steady timers wait until their phase moves them (after every other)."""
        return self.start + timedelta(days=32)


@dataclass
class Seeded:
    database: support.Database
    engine: Engine
    #: Case ids of the copies: burst ones are first_case .. first_case + burst - 1, then steady.
    first_case: int
    layout: Layout
    pending: int
    seconds: float

    def burst_range(self) -> tuple[int, int]:
        return self.first_case, self.first_case + self.layout.burst - 1

    def steady_range(self) -> tuple[int, int]:
        first = self.first_case + self.layout.burst
        return first, first + self.layout.steady - 1


_COPIED_CASE = support._CASE_COLUMNS.replace("order_id", "'o-' || CAST(n AS TEXT)")


def seed(database: support.Database, layout: Layout, progress: Progress, name: str) -> Seeded:
    """One case approved through the service (its ``return_shipment`` timer armed), then
    ``layout.timers`` set-based copies of its case row, each with a pending timer of its own.

    Only cases and timers are copied (not the template's log rows and item claims): the sweep
    reads neither, and firing needs only the case row.
    """
    started = time.monotonic()
    engine = make_engine(database.url)
    service = CaseService(
        SqlUnitOfWorkFactory(engine), FakeClock(layout.start - timedelta(hours=1)), load_policy()
    )
    application = support.application("o-template")
    application["delivered_at"] = (layout.start - timedelta(days=2)).isoformat()
    application["payment"]["paid_at"] = (layout.start - timedelta(days=5)).isoformat()
    template = support.submit_with_order(service, application).case.id
    assert template is not None
    service.fire(template, "approve", support.MERCHANT)
    with engine.begin() as connection:
        # The template's own timer would be one more pending timer than asked for.
        connection.execute(
            sa.text("UPDATE timers SET status = 'cancelled' WHERE case_id = :t"), {"t": template}
        )
    task = progress.add_task(f"seed {name}: cases + pending timers", total=layout.timers)
    later_span_s = 28 * 86_400
    for chunk_start in range(0, layout.timers, SEED_CHUNK):
        count = min(SEED_CHUNK, layout.timers - chunk_start)
        with engine.begin() as connection:
            before = connection.execute(sa.text("SELECT max(id) FROM cases")).scalar_one()
            connection.execute(
                sa.text(
                    f"INSERT INTO cases ({support._CASE_COLUMNS}) SELECT {_COPIED_CASE} "
                    "FROM cases, generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS n "
                    "WHERE cases.id = :t ORDER BY n"
                ),
                {"lo": chunk_start + 1, "hi": chunk_start + count, "t": template},
            )
            # Position i of a copy is its id's offset from the first copy (ids come from one
            # sequence in this one session; ``_check_layout`` verifies). Later timers are spread
            # over four weeks in an order unrelated to their ids, as real deadlines are.
            connection.execute(
                sa.text(
                    'INSERT INTO timers (case_id, kind, "trigger", state, version, due_at, '
                    "status, created_at) "
                    'SELECT c.id, t.kind, t."trigger", t.state, t.version, '
                    "CASE WHEN c.id - :t - 1 < :burst THEN CAST(:burst_at AS timestamptz) "
                    "WHEN c.id - :t - 1 < :burst + :steady THEN CAST(:parked AS timestamptz) "
                    "ELSE CAST(:later_from AS timestamptz) + "
                    "((c.id * 7919) % :timers) * (:span / :timers) * interval '1 second' END, "
                    "'pending', t.created_at "
                    "FROM cases c, timers t WHERE c.id > :before AND t.case_id = :t "
                    "AND t.kind = 'return_shipment' "
                    "ORDER BY c.id"
                ),
                {
                    "t": template,
                    "before": before,
                    "burst": layout.burst,
                    "steady": layout.steady,
                    "burst_at": layout.burst_at,
                    "later_from": layout.later_from,
                    "parked": layout.steady_parked_at,
                    "timers": layout.timers,
                    "span": float(later_span_s),
                },
            )
        progress.update(task, completed=chunk_start + count)
    vacuum = progress.add_task(f"seed {name}: VACUUM ANALYZE", total=1)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text("VACUUM ANALYZE cases"))
        connection.execute(sa.text("VACUUM ANALYZE timers"))
    progress.update(vacuum, completed=1)
    with engine.connect() as connection:
        first = connection.execute(
            sa.text("SELECT min(id) FROM cases WHERE id > :t"), {"t": template}
        ).scalar_one()
        pending = connection.execute(
            sa.text("SELECT count(*) FROM timers WHERE status = 'pending'")
        ).scalar_one()
    seeded = Seeded(database, engine, int(first), layout, int(pending), time.monotonic() - started)
    _check_layout(seeded)
    return seeded


def _check_layout(seeded: Seeded) -> None:
    """The burst and steady timers are where the phases will look for them."""
    layout = seeded.layout
    if seeded.pending != layout.timers:
        raise RuntimeError(f"seeded {seeded.pending} pending timers, wanted {layout.timers}")
    groups = {
        "burst": (seeded.burst_range(), layout.burst, layout.burst_at),
        "steady": (seeded.steady_range(), layout.steady, layout.steady_parked_at),
    }
    with seeded.engine.connect() as connection:
        for name, ((lo, hi), wanted, due_at) in groups.items():
            found = connection.execute(
                sa.text(
                    "SELECT count(*), min(case_id), max(case_id) FROM timers "
                    "WHERE due_at = :due_at AND status = 'pending'"
                ),
                {"due_at": due_at},
            ).one()
            expected = (wanted, lo, hi) if wanted else (0, None, None)
            if tuple(found) != expected:
                raise RuntimeError(f"{name} timers are {tuple(found)}, expected {expected}")
