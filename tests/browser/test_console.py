"""The console in a real browser: what an operator and a merchant do, and what they may not."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from playwright.sync_api import Page, expect

from entrypoints.console_screenshots import sign_in
from entrypoints.console_showcase import ShowcaseServer

NewPage = Callable[[], Page]


def api_case(page: Page, server: ShowcaseServer, case_id: int) -> dict[str, Any]:
    """The case as the JSON API shows it to an admin (the same database as the console)."""
    answer = page.request.get(
        f"{server.url}/cases/{case_id}",
        headers={"Authorization": f"Bearer {server.seeded.admin}"},
    )
    assert answer.status == 200, answer.text()
    body: dict[str, Any] = answer.json()
    return body


def test_an_admin_filters_overdue_opens_a_case_and_fires_an_action(
    server: ShowcaseServer, new_page: NewPage
) -> None:
    # given an admin signed in on the queue
    page = new_page()
    sign_in(page, server.url, server.seeded.admin)
    seeded = server.seeded
    expect(page.locator(f"#case-row-{seeded.fresh_case}")).to_have_count(1)

    # when they filter the overdue cases
    page.get_by_label("Overdue only").check()
    page.get_by_role("button", name="Filter").click()

    # then only overdue cases are listed, the running one is gone
    expect(page).to_have_url(re.compile(r"overdue=true"))
    expect(page.locator(f"#case-row-{seeded.fresh_case}")).to_have_count(0)
    countdowns = page.locator("table.queue .countdown")
    expect(countdowns.first).to_contain_text("overdue by")
    for text in countdowns.all_inner_texts():
        assert text.startswith("overdue by"), text

    # when they open the overdue case and escalate it with a reason
    page.get_by_role("link", name=f"#{seeded.overdue_case}", exact=True).click()
    timeline = page.locator("#timeline li")
    expect(timeline).to_have_count(1)
    action = page.locator("form.action[data-trigger=escalate]")
    action.get_by_label("Reason to escalate (required)").fill("buyer called twice")
    action.get_by_role("button", name="escalate").click()

    # then the timeline grew by the transition, with its reason, actor and channel
    expect(timeline).to_have_count(2)
    expect(timeline.first).to_contain_text("escalate")
    expect(timeline.first).to_contain_text("buyer called twice")
    expect(timeline.first).to_contain_text("by admin:ops via console token")
    expect(page.locator("#case-state")).to_have_text("disputed")
    assert api_case(page, server, seeded.overdue_case)["state"] == "disputed"


def test_a_merchant_cannot_open_or_act_on_another_merchants_case(
    server: ShowcaseServer, new_page: NewPage
) -> None:
    # given merchant m1 signed in with the keyboard alone (the token field has the focus)
    page = new_page()
    page.goto(f"{server.url}/console/sign-in")
    page.keyboard.type(server.seeded.merchant_m1)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server.url}/console/queue")
    other = server.seeded.other_merchants_case
    before = api_case(page, server, other)

    # then m2's case is not in m1's queue
    expect(page.locator(f"#case-row-{server.seeded.fresh_case}")).to_have_count(1)
    expect(page.locator(f"#case-row-{other}")).to_have_count(0)

    # when m1 opens m2's case page
    response = page.goto(f"{server.url}/console/cases/{other}")

    # then it is refused with the 403 page
    assert response is not None and response.status == 403
    expect(page.locator("h1")).to_have_text("This token may not do this")

    # when m1 posts to m2's case with a valid CSRF token of its own session
    page.goto(f"{server.url}/console/cases/{server.seeded.fresh_case}")
    csrf = page.locator("input[name=csrf_token]").first.input_value()
    answer = page.request.post(
        f"{server.url}/console/cases/{other}/fire",
        form={"csrf_token": csrf, "version": str(before["version"]), "trigger": "approve"},
        max_redirects=0,
    )

    # then it is refused too, and the case did not move
    assert answer.status == 403, answer.text()
    after = api_case(page, server, other)
    assert (after["state"], after["version"]) == (before["state"], before["version"])


def test_a_form_without_its_csrf_token_is_refused(
    server: ShowcaseServer, new_page: NewPage
) -> None:
    # given an admin on a case page whose escalate form lost its CSRF token
    page = new_page()
    sign_in(page, server.url, server.seeded.admin)
    case_id = server.seeded.fresh_case
    before = api_case(page, server, case_id)
    page.goto(f"{server.url}/console/cases/{case_id}")
    action = page.locator("form.action[data-trigger=escalate]")
    action.locator("input[name=csrf_token]").evaluate("input => input.remove()")
    expect(action.locator("input[name=csrf_token]")).to_have_count(0)

    # when the form is sent
    action.get_by_label("Reason to escalate (required)").fill("no token")
    action.get_by_role("button", name="escalate").click()

    # then it is refused, and nothing changed
    expect(page.locator("h1")).to_have_text("Form refused")
    expect(page.locator(".error-page .status")).to_have_text("403")
    after = api_case(page, server, case_id)
    assert after["version"] == before["version"]


def test_a_stale_page_shows_the_conflict_and_a_refresh(
    server: ShowcaseServer, new_page: NewPage
) -> None:
    # given an admin who opened a case page
    page = new_page()
    sign_in(page, server.url, server.seeded.admin)
    case_id = server.seeded.exchange_case
    page.goto(f"{server.url}/console/cases/{case_id}")
    expect(page.locator("#case-state")).to_have_text("submitted")

    # and the case moved since, through the API
    moved = page.request.post(
        f"{server.url}/cases/{case_id}/transitions",
        headers={"Authorization": f"Bearer {server.seeded.admin}"},
        data={"trigger": "escalate", "reason": "moved meanwhile"},
    )
    assert moved.status == 200, moved.text()

    # when the admin acts on the page as it was
    action = page.locator("form.action[data-trigger=force_close]")
    action.get_by_label("Reason to force close (required)").fill("duplicate case")
    action.get_by_role("button", name="force close").click()

    # then the conflict is shown, nothing is done, and a refresh shows the case as it is
    expect(page.locator("h1")).to_have_text("Changed since you opened it")
    expect(page.locator(".error-page .status")).to_have_text("412")
    assert api_case(page, server, case_id)["state"] == "disputed"
    page.get_by_role("link", name="Refresh the case").click()
    expect(page.locator("#case-state")).to_have_text("disputed")
    expect(page.locator("#timeline li").first).to_contain_text("moved meanwhile")


def test_a_merchant_approves_in_bulk_with_a_result_per_case(
    server: ShowcaseServer, new_page: NewPage
) -> None:
    # given merchant m1 on its queue
    page = new_page()
    sign_in(page, server.url, server.seeded.merchant_m1)
    seeded = server.seeded

    # when it selects a case awaiting review and one on its way back, and approves them
    page.get_by_label(f"select case {seeded.fresh_case}").check()
    page.get_by_label(f"select case {seeded.shipped_back_case}").check()
    page.get_by_label("With the selected cases").select_option("approve")
    page.get_by_role("button", name="Apply to selected").click()

    # then one is applied and the other refused with the engine's rule
    expect(page.locator("h1")).to_contain_text("1 of 2 applied")
    applied = page.locator("tr.ok")
    refused = page.locator("tr.refused")
    expect(applied).to_contain_text(f"#{seeded.fresh_case}")
    expect(applied).to_contain_text("approved")
    expect(refused).to_contain_text(f"#{seeded.shipped_back_case}")
    expect(refused).to_contain_text("not_allowed")


def test_pages_and_api_docs_load_nothing_from_elsewhere(
    server: ShowcaseServer, new_page: NewPage
) -> None:
    # given a browser that records every request leaving this machine
    page = new_page()
    outside: list[str] = []

    def watch(route: Any) -> None:
        url = route.request.url
        if url.startswith(server.url) or url.startswith("data:"):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    page.route("**/*", watch)

    # when the API docs, ReDoc and a case page with its diagram load
    page.goto(f"{server.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("aftersales")
    page.goto(f"{server.url}/redoc")
    expect(page.locator("h1").first).to_contain_text("aftersales")
    sign_in(page, server.url, server.seeded.admin)
    page.goto(f"{server.url}/console/cases/{server.seeded.shipped_back_case}")
    expect(page.locator("body[data-diagram=drawn]")).to_have_count(1)
    expect(page.locator(".diagram svg")).to_have_count(1)

    # then everything came from the service itself
    assert outside == []


def test_an_admin_works_the_timers_dead_letters_and_figures(
    server: ShowcaseServer, new_page: NewPage
) -> None:
    # given an admin signed in
    page = new_page()
    sign_in(page, server.url, server.seeded.admin)

    # then the timers page lists the overdue review deadlines with their lateness
    page.get_by_role("link", name="Timers").click()
    late = page.locator("table.timers td.late")
    expect(late.first).to_contain_text("overdue by")

    # when the admin discards the open dead letter with a reason
    page.get_by_role("link", name="Dead letters").click()
    letter = page.locator("section.letter").first
    expect(letter).to_contain_text("sf-express/sf-77")
    letter.get_by_label("Reason to discard").fill("test parcel, not ours")
    letter.get_by_role("button", name="Discard").click()

    # then it leaves the open letters and is kept, discarded, with the reason and the admin
    expect(page.locator(".notice")).to_contain_text("discarded")
    expect(page.locator("section.letter")).to_have_count(0)
    page.get_by_label("Status").select_option("discarded")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("section.letter").first).to_contain_text("test parcel, not ours")
    expect(page.locator("section.letter").first).to_contain_text("admin:ops")

    # and the figures page shows both merchants over the default period
    page.get_by_role("link", name="Figures").click()
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("m1")


#: Every visible form control without a label: ``<label for>``, a wrapping label or aria-label.
UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea')]
    .filter(el => el.type !== 'hidden' && el.offsetParent !== null)
    .filter(el => el.labels.length === 0 && !el.getAttribute('aria-label'))
    .map(el => el.outerHTML)"""


def test_every_form_control_has_a_label_and_keyboard_focus_reaches_the_actions(
    server: ShowcaseServer, new_page: NewPage
) -> None:
    # given a merchant (bulk checkboxes) and an admin (deadline, force actions, operations)
    seeded = server.seeded
    for token, paths in (
        (seeded.merchant_m1, ["/console/queue", f"/console/cases/{seeded.shipped_back_case}"]),
        (
            seeded.admin,
            [
                "/console/queue",
                f"/console/cases/{seeded.fresh_case}",
                "/console/timers",
                "/console/dead-letters",
                "/console/figures",
            ],
        ),
    ):
        page = new_page()
        sign_in(page, server.url, token)
        for path in paths:
            # when each page is shown
            page.goto(f"{server.url}{path}")
            expect(page.locator("main h1")).to_have_count(1)
            # then each of its controls is labelled
            assert page.evaluate(UNLABELLED) == [], path

    # and tabbing from the top of a case page reaches its first action button
    page.goto(f"{server.url}/console/cases/{seeded.fresh_case}")
    first_action = page.locator("form.action button").first
    for _ in range(40):
        page.keyboard.press("Tab")
        if first_action.evaluate("button => document.activeElement === button"):
            break
    else:
        raise AssertionError("Tab never reached the first action button")


def test_a_refused_filter_shows_its_error_page(server: ShowcaseServer, new_page: NewPage) -> None:
    # given an admin on the queue
    page = new_page()
    sign_in(page, server.url, server.seeded.admin)

    # when the merchant filter is not an id
    page.get_by_label("Merchant").fill("m 1!")
    page.get_by_role("button", name="Filter").click()

    # then the error page says why instead of the table staying as it was
    expect(page.locator(".error-page .status")).to_have_text("422")
    expect(page.locator(".error-page")).to_contain_text("is not an id")
