"""Fixtures of the unit tests: a fake clock at a fixed instant, the policy, an in-memory service.

No database: ``InMemoryUnitOfWorkFactory`` keeps the storage contract (commit or nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from config.policy import Policy, load_policy
from workflow.clock import FakeClock
from workflow.memory import InMemoryDatabase, InMemoryUnitOfWorkFactory
from workflow.service import CaseService
from workflow.states import CaseType

from . import builders


@pytest.fixture(scope="session")
def policy() -> Policy:
    """The default policy of config/policy.toml (RULES.md part B); it is immutable."""
    return load_policy()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(builders.NOW)


@pytest.fixture
def uow_factory() -> InMemoryUnitOfWorkFactory:
    return InMemoryUnitOfWorkFactory()


@pytest.fixture
def db(uow_factory: InMemoryUnitOfWorkFactory) -> InMemoryDatabase:
    """The committed state of the fake storage, for assertions on what was (not) written."""
    return uow_factory.db


@pytest.fixture
def service(
    uow_factory: InMemoryUnitOfWorkFactory, clock: FakeClock, policy: Policy
) -> CaseService:
    return CaseService(uow_factory, clock, policy)


@pytest.fixture
def make_app(clock: FakeClock) -> Callable[..., dict[str, Any]]:
    """``make_app(type, **overrides)``: a default application relative to the clock's now."""

    def make(
        case_type: CaseType | str = CaseType.RETURN_REFUND, **overrides: Any
    ) -> dict[str, Any]:
        return builders.application(case_type, now=clock.now(), **overrides)

    return make


@pytest.fixture
def new_case(service: CaseService) -> Callable[..., int]:
    """``new_case(type, label="submitted", **overrides)``: submit and drive to a state label."""

    def make(case_type: CaseType | str, label: str = "submitted", **overrides: Any) -> int:
        return builders.submit_in(service, case_type, label, **overrides)

    return make


@pytest.fixture
def drive_to(service: CaseService) -> Callable[[int, str], None]:
    def drive(case_id: int, label: str) -> None:
        builders.drive_to(service, case_id, label)

    return drive
