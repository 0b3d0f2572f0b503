"""The chaos benchmarks' checks once a run has settled (``verify``): every case terminal; each
case's log gapless, made of its type's transition table rows, replaying to its state; no trigger
twice; each fired timer one transition; at most one refund paid per case, with the amount the case
records; every outbox row completed, nothing dead-lettered.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from bench.chaos_common import Deployment, wait_until
from persistence.db import make_engine
from persistence.tables import cases, dead_letters, outbox, timers, transitions
from workflow.definitions import TIMER_SPECS, rules_for
from workflow.states import TERMINAL_STATES, CaseState, CaseType


@dataclass
class Findings:
    cases: int = 0
    terminal: int = 0
    by_state: Counter[str] = field(default_factory=Counter)
    transitions: int = 0
    log_gaps: int = 0
    replay_mismatches: int = 0
    duplicate_transitions: int = 0
    timers_fired: int = 0
    timer_mismatches: int = 0
    timers_live: int = 0
    refunds: int = 0
    refunded_fen: int = 0
    duplicate_refunds: int = 0
    refund_mismatches: int = 0
    outbox_rows: int = 0
    outbox_pending: int = 0
    outbox_republished: int = 0
    dead_letters: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return self.duplicate_transitions + self.duplicate_refunds + self.timer_mismatches

    @property
    def ok(self) -> bool:
        return (
            self.terminal == self.cases
            and not self.log_gaps
            and not self.replay_mismatches
            and not self.duplicates
            and not self.timers_live
            and not self.refund_mismatches
            and not self.outbox_pending
            and not self.dead_letters
        )

    def summary(self) -> str:
        """The checks' figures for a ``SUMMARY`` line."""
        return (
            f"cases={self.cases} terminal={self.terminal} transitions={self.transitions} "
            f"refunds={self.refunds} timers_fired={self.timers_fired} outbox={self.outbox_rows} "
            f"pending={self.outbox_pending} republished={self.outbox_republished} "
            f"log_gaps={self.log_gaps} replay_mismatches={self.replay_mismatches} "
            f"duplicates_found={self.duplicates}"
        )

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)


#: The warning ``tasks.unconfirmed`` logs when it sends producers' events again.
_RESENT = re.compile(r"events not processed [\d.]+ s after they were sent: (\d+) sent again")


def resent_from_ledger(run: Deployment) -> int:
    """How many events the service sent again from the producers' ledger (every process log
    of the run: each start of each slot has its own)."""
    return sum(
        int(match[1])
        for log in run.folder.glob("*.log")
        for match in _RESENT.finditer(log.read_text(errors="replace"))
    )


#: The worker's lines for a job of single events applied together, and for one that failed and
#: handed its messages to Celery's own path (tasks/coalesce.py).
_COALESCED = re.compile(r"coalesced job of (\d+) aftersales\.ingest_event messages")
_FELL_BACK = re.compile(r"(\d+) coalesced aftersales\.ingest_event messages failed together")


def coalesced_jobs(run: Deployment) -> tuple[int, int, int]:
    """(jobs that returned, the events they applied, jobs that failed and fell back) over every
    worker log of the run."""
    texts = [log.read_text(errors="replace") for log in run.folder.glob("*.log")]
    sizes = [int(m[1]) for text in texts for m in _COALESCED.finditer(text)]
    failed = sum(1 for text in texts for _ in _FELL_BACK.finditer(text))
    return len(sizes), sum(sizes), failed


def wait_settled(run: Deployment, timeout: float = 120) -> None:
    """Wait for every outbox row to be completed (effects of the last transitions)."""
    engine = make_engine(run.database_url)
    query = sa.select(sa.func.count()).select_from(outbox).where(outbox.c.completed_at.is_(None))

    def settled() -> bool:
        with engine.connect() as connection:
            return connection.execute(query).scalar_one() == 0

    with contextlib.suppress(TimeoutError):
        wait_until(settled, "the outbox to drain", timeout)


def verify(run: Deployment) -> Findings:
    engine = make_engine(run.database_url)
    found = Findings()
    with engine.connect() as connection:
        case_rows = {row.id: row for row in connection.execute(sa.select(cases))}
        log: dict[int, list[Any]] = {}
        for row in connection.execute(
            sa.select(transitions).order_by(transitions.c.case_id, transitions.c.seq)
        ):
            log.setdefault(row.case_id, []).append(row)
        timer_rows = list(connection.execute(sa.select(timers)))
        outbox_rows = list(connection.execute(sa.select(outbox)))
        found.dead_letters = connection.execute(
            sa.select(sa.func.count()).select_from(dead_letters)
        ).scalar_one()
    found.cases = len(case_rows)
    for case_id, row in case_rows.items():
        state = CaseState(row.state)
        found.by_state[state.value] += 1
        found.terminal += state in TERMINAL_STATES
        records = log.get(case_id, [])
        found.transitions += len(records)
        _check_log(found, case_id, row, records)
    _check_timers(found, timer_rows, log)
    _check_refunds(found, run, case_rows)
    found.outbox_rows = len(outbox_rows)
    found.outbox_pending = sum(1 for row in outbox_rows if row.completed_at is None)
    found.outbox_republished = sum(1 for row in outbox_rows if row.attempts > 1)
    return found


def _check_log(found: Findings, case_id: int, row: Any, records: list[Any]) -> None:
    if [record.seq for record in records] != list(range(1, row.version + 1)):
        found.log_gaps += 1
        found.problem(f"case {case_id}: seq {[r.seq for r in records]} vs version {row.version}")
    rules = rules_for(CaseType(row.type))
    previous: str | None = None
    for record in records:
        legal = (
            record.seq == 1 and record.trigger == "submit" and record.to_state == "submitted"
        ) or any(
            rule.trigger == record.trigger
            and record.from_state in {s.value for s in rule.sources}
            and rule.dest.value == record.to_state
            for rule in rules
        )
        if record.from_state != previous or not legal:
            found.replay_mismatches += 1
            found.problem(
                f"case {case_id}: {record.trigger} {record.from_state}->{record.to_state}"
            )
            break
        previous = record.to_state
    if previous != row.state:
        found.replay_mismatches += 1
        found.problem(f"case {case_id}: the log ends in {previous}, the case is {row.state}")
    repeated = Counter(record.trigger for record in records)
    for trigger, times in repeated.items():
        if times > 1:
            found.duplicate_transitions += times - 1
            found.problem(f"case {case_id}: {trigger} {times} times")


def _check_timers(found: Findings, timer_rows: list[Any], log: dict[int, list[Any]]) -> None:
    timer_triggers = {spec.trigger for spec in TIMER_SPECS.values()}
    fired = [row for row in timer_rows if row.status == "fired"]
    found.timers_fired = len(fired)
    found.timers_live = sum(1 for row in timer_rows if row.status in ("pending", "claimed"))
    for timer in fired:
        records = {record.seq: record for record in log.get(timer.case_id, [])}
        caused = records.get(timer.version + 1)
        if caused is None or caused.trigger != timer.trigger or caused.actor != "system":
            found.timer_mismatches += 1
            found.problem(f"timer {timer.id} ({timer.kind}) fired without its transition")
    by_timers = sum(
        1
        for records in log.values()
        for record in records
        if record.actor == "system" and record.trigger in timer_triggers
    )
    if by_timers != len(fired):
        found.timer_mismatches += abs(by_timers - len(fired))
        found.problem(f"{by_timers} timer transitions for {len(fired)} fired timers")


def _check_refunds(found: Findings, run: Deployment, case_rows: dict[int, Any]) -> None:
    paid: dict[int, list[Any]] = {}
    for entry in run.payments.ledger():
        if entry.status.value == "succeeded":
            paid.setdefault(entry.case_id, []).append(entry)
    for case_id, row in case_rows.items():
        entries = paid.get(case_id, [])
        found.refunds += len(entries)
        found.refunded_fen += sum(entry.amount for entry in entries)
        if len(entries) > 1:
            found.duplicate_refunds += len(entries) - 1
            found.problem(f"case {case_id}: {len(entries)} refunds paid")
        if row.state == CaseState.REFUNDED.value:
            reference = (row.details or {}).get("refund_reference")
            if (
                len(entries) != 1
                or entries[0].amount != row.refund_amount
                or (entries[0].reference != reference)
            ):
                found.refund_mismatches += 1
                found.problem(f"case {case_id}: refunded, ledger {entries}")
        elif entries:
            found.refund_mismatches += 1
            found.problem(f"case {case_id}: {row.state} but paid {entries}")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def findings_table(found: Findings) -> list[tuple[str, str]]:
    return [
        ("cases (terminal)", f"{found.cases} ({found.terminal})"),
        ("final states", ", ".join(f"{k} {v}" for k, v in sorted(found.by_state.items()))),
        ("transitions logged", str(found.transitions)),
        ("log gaps / replay mismatches", f"{found.log_gaps} / {found.replay_mismatches}"),
        ("timers fired (left live)", f"{found.timers_fired} ({found.timers_live})"),
        ("refunds paid (fen)", f"{found.refunds} ({found.refunded_fen})"),
        ("refund mismatches", str(found.refund_mismatches)),
        (
            "outbox rows (pending, published again)",
            f"{found.outbox_rows} ({found.outbox_pending}, {found.outbox_republished})",
        ),
        ("dead letters", str(found.dead_letters)),
        (
            "duplicates found (transitions, refunds, timers)",
            f"{found.duplicates} ({found.duplicate_transitions}, {found.duplicate_refunds}, "
            f"{found.timer_mismatches})",
        ),
    ]
