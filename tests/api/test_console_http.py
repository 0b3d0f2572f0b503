"""The console over HTTP, without a browser: sessions, CSRF, authorization and the local API
docs, on SQLite and PostgreSQL (the browser tests in tests/browser drive the pages)."""

from __future__ import annotations

import html
import re
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from typer.testing import CliRunner

from entrypoints import views
from entrypoints.cli.main import app as cli
from entrypoints.http.console.queue import PAGE

from .conftest import Api

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, html
    return found.group(1)


def sign_in(api: Api, scope: str) -> Any:
    """Sign in as a new browser would (no cookies yet): one session per client at a time."""
    api.client.cookies.clear()
    token = api.token(scope)
    page = api.client.get("/console/sign-in")
    assert page.status_code == 200
    return api.client.post(
        "/console/sign-in",
        data={"csrf_token": csrf_of(page.text), "token": token, "zone": "Europe/Berlin"},
        follow_redirects=False,
    ), token


def test_a_page_without_a_session_goes_to_sign_in(api: Api) -> None:
    answer = api.client.get("/console/queue", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/sign-in?next=/console/queue"


def test_sign_in_sets_a_strict_httponly_expiring_cookie_without_the_token(api: Api) -> None:
    # when an admin signs in
    answer, token = sign_in(api, "admin")

    # then the session cookie is HttpOnly, SameSite=Strict, expiring, and holds no token
    assert answer.status_code == 303, answer.text
    cookie = next(
        value
        for name, value in answer.headers.multi_items()
        if name == "set-cookie" and value.startswith("aftersales_console=")
    )
    attributes = cookie.lower()
    assert "httponly" in attributes and "samesite=strict" in attributes
    assert "max-age=28800" in attributes and "path=/console" in attributes
    assert token not in cookie and token.removeprefix("ast_") not in cookie
    queue = api.client.get("/console/queue")
    assert queue.status_code == 200
    assert "admin · Europe/Berlin" in queue.text


def test_a_revoked_token_or_a_tampered_cookie_ends_the_session(api: Api) -> None:
    # given a signed-in merchant
    _answer, token = sign_in(api, "merchant:m1")
    assert api.client.get("/console/queue", follow_redirects=False).status_code == 200
    cookie = api.client.cookies["aftersales_console"]

    # when the cookie is altered, the session is gone
    api.client.cookies.set("aftersales_console", cookie[:-2] + "xx", path="/console")
    assert api.client.get("/console/queue", follow_redirects=False).status_code == 303

    # when the token is revoked, so is the session made with it
    api.client.cookies.set("aftersales_console", cookie, path="/console")
    stored = api.tokens.authenticate(token)
    assert stored is not None
    api.tokens.revoke(stored.id, api.clock.now())
    assert api.client.get("/console/queue", follow_redirects=False).status_code == 303


def test_an_expired_token_neither_signs_in_nor_keeps_its_session(api: Api) -> None:
    # given a merchant signed in with a token that expires in an hour
    api.client.cookies.clear()
    _stored, token = api.tokens.create(
        "merchant", "m1", None, api.clock.now(), expires_at=api.clock.now() + timedelta(hours=1)
    )
    page = api.client.get("/console/sign-in")
    signed_in = api.client.post(
        "/console/sign-in",
        data={"csrf_token": csrf_of(page.text), "token": token},
        follow_redirects=False,
    )
    assert signed_in.status_code == 303, signed_in.text
    assert api.client.get("/console/queue", follow_redirects=False).status_code == 200

    # when the token expires, the session it made ends with it (the cookie lasts 8 hours)
    api.clock.advance(timedelta(hours=1, seconds=1))
    assert api.client.get("/console/queue", follow_redirects=False).status_code == 303

    # and the expired token cannot sign in again
    page = api.client.get("/console/sign-in")
    again = api.client.post(
        "/console/sign-in", data={"csrf_token": csrf_of(page.text), "token": token}
    )
    assert again.status_code == 401
    assert "unknown, revoked or expired token" in again.text


def test_sign_in_refuses_a_form_without_its_csrf_token_and_a_wrong_token(api: Api) -> None:
    api.client.get("/console/sign-in")
    without = api.client.post("/console/sign-in", data={"token": api.token("admin")})
    assert without.status_code == 403
    assert "CSRF" in without.text
    page = api.client.get("/console/sign-in")
    wrong = api.client.post(
        "/console/sign-in", data={"csrf_token": csrf_of(page.text), "token": "ast_nope"}
    )
    assert wrong.status_code == 401
    assert "unknown, revoked or expired token" in wrong.text
    assert "aftersales_console=" not in wrong.headers.get("set-cookie", "")


def test_a_producer_token_has_no_console(api: Api) -> None:
    answer, _token = sign_in(api, "producer:sf-express")
    assert answer.status_code == 401
    assert "has no console" in answer.text


def test_a_merchant_is_refused_another_merchants_case_page_and_a_buyer_the_timers(
    api: Api,
) -> None:
    other = api.submit(merchant_id="m2", order_id="o-2")
    sign_in(api, "merchant:m1")
    page = api.client.get(f"/console/cases/{other}")
    assert page.status_code == 403
    assert "text/html" in page.headers["content-type"]
    sign_in(api, "buyer:b1")
    assert api.client.get("/console/timers").status_code == 403
    assert api.client.get("/console/dead-letters").status_code == 403


def test_a_form_that_is_not_urlencoded_is_refused(api: Api) -> None:
    case_id = api.submit()
    sign_in(api, "admin")
    answer = api.client.post(f"/console/cases/{case_id}/fire", json={"trigger": "escalate"})
    assert answer.status_code == 415


def test_api_docs_load_their_files_from_this_service(api: Api) -> None:
    for path, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        page = api.client.get(path)
        assert page.status_code == 200
        assert "cdn" not in page.text.lower() and "googleapis" not in page.text
        src = re.search(r'src="([^"]*' + re.escape(asset) + ')"', page.text)
        assert src, page.text
        assert api.client.get(src.group(1)).status_code == 200


def test_docs_and_console_pages_answer_options_and_405_as_the_api_does(api: Api) -> None:
    # given pages the console adds to the app (before: the Gate knew the API's routes only, so
    # OPTIONS /docs was a 405 and its Allow lacked OPTIONS)
    pages = {
        "/docs": "GET, OPTIONS",
        "/redoc": "GET, OPTIONS",
        "/console/queue": "GET, OPTIONS",
        "/console/sign-in": "GET, OPTIONS, POST",
    }
    for path, allow in pages.items():
        # when OPTIONS asks, then 204 names the page's methods and OPTIONS
        options = api.client.options(path)
        assert options.status_code == 204, (path, options.text)
        assert options.headers["allow"] == allow
        # and a method the page does not have is 405 with the same Allow
        refused = api.client.request("PATCH", path)
        assert refused.status_code == 405, (path, refused.text)
        assert refused.headers["allow"] == allow


def test_a_session_notes_its_tokens_last_use_as_the_api_does(api: Api) -> None:
    # given a merchant signed in on the console only (its token never used on the API)
    answer, token = sign_in(api, "merchant:m1")
    assert answer.status_code == 303
    stored = api.tokens.authenticate(token)
    assert stored is not None
    # when it opens the queue, then `tokens list` shows when it was last used
    api.client.cookies.set("aftersales_console", answer.cookies["aftersales_console"])
    assert api.client.get("/console/queue", follow_redirects=False).status_code == 200
    used = api.tokens.get(stored.id)
    assert used is not None and used.last_used_at is not None


def test_console_routes_are_not_in_the_openapi_document(api: Api) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith(("/console", "/docs", "/redoc"))]


def test_an_unknown_console_path_is_the_consoles_404_page(api: Api) -> None:
    sign_in(api, "admin")
    answer = api.client.get("/console/no-such-page")
    assert answer.status_code == 404
    assert "text/html" in answer.headers["content-type"]
    assert api.client.get("/console/static/console.css").status_code == 200


def test_the_console_with_or_without_a_trailing_slash_opens_the_queue(api: Api) -> None:
    # before: /console went to the queue but /console/ was the 404 page
    for path in ("/console", "/console/"):
        answer = api.client.get(path, follow_redirects=False)
        assert answer.status_code == 303, (path, answer.text)
        assert answer.headers["location"] == "/console/queue"


def test_the_queue_lists_what_get_cases_lists_for_the_same_parameters(api: Api) -> None:
    # given cases of two merchants, one past its review deadline
    first = api.submit()
    api.clock.advance(timedelta(hours=47))
    second = api.submit(merchant_id="m2", order_id="o-2")
    third = api.submit(order_id="o-3")
    api.fire(third, "approve", "merchant:m1")
    api.clock.advance(timedelta(hours=2))
    admin = api.auth("admin")
    sign_in(api, "admin")

    for params in (
        {"overdue": "true", "sort": "deadline"},
        {"sort": "age", "order": "desc"},
        {"deadline_within_hours": "48", "sort": "deadline"},
        {"q": "o-2"},
        {"merchant_id": "m1", "sort": "id", "order": "desc"},
    ):
        # when the console's queue and the API are asked the same
        page = api.client.get("/console/queue", params=params)
        listed = api.client.get("/cases", params=params, headers=admin)

        # then they list the same cases in the same order
        assert page.status_code == 200 and listed.status_code == 200, listed.text
        shown = [int(found) for found in re.findall(r'id="case-row-(\d+)"', page.text)]
        assert shown == [case["id"] for case in listed.json()["cases"]], params
    assert {first, second, third} >= set(shown)


def test_the_queue_pages_keep_their_filters_and_repeat_no_case(api: Api) -> None:
    # given more of m1's cases than one page holds, and one of m2's
    mine = {api.submit(order_id=f"o-{n}") for n in range(PAGE + 3)}
    api.submit(order_id="o-other", merchant_id="m2")
    sign_in(api, "admin")

    # when the admin pages through m1's queue, oldest first
    seen: list[int] = []
    url: str | None = "/console/queue?merchant_id=m1&sort=age"
    for _ in range(3):  # two pages; a third would repeat
        if url is None:
            break
        page = api.client.get(url)
        assert page.status_code == 200, page.text
        seen += [int(n) for n in re.findall(r'href="/console/cases/(\d+)"', page.text)]
        link = re.search(r'<a href="([^"]+)">Next page</a>', page.text)
        url = html.unescape(link.group(1)) if link else None

    # then every case of m1 shows once, in order, and no other merchant's
    assert seen == sorted(mine)


def test_a_buyer_fires_a_trigger_with_its_data_fields(api: Api) -> None:
    # given an approved case and its buyer on the case page
    case_id = api.submit()
    api.fire(case_id, "approve", "merchant:m1")
    sign_in(api, "buyer:b1")
    page = api.client.get(f"/console/cases/{case_id}")
    assert 'name="data.tracking_no"' in page.text

    # when the buyer sends ship_back with a tracking number
    answer = api.client.post(
        f"/console/cases/{case_id}/fire",
        data={
            "csrf_token": csrf_of(page.text),
            "version": "2",
            "trigger": "ship_back",
            "data.tracking_no": "SF42",
            "data.carrier": "",
        },
        follow_redirects=False,
    )

    # then the case moved with that data, logged as coming from the console
    assert answer.status_code == 303, answer.text
    record = api.cases.history(case_id)[-1]
    assert (record.trigger, record.data.get("tracking_no")) == ("ship_back", "SF42")
    assert record.source is not None and record.source.startswith("console token #")


def test_a_refusal_shows_its_times_in_the_viewers_zone(api: Api) -> None:
    # given a case past its merchant review and its merchant signed in from Berlin
    case_id = api.submit()
    due = api.cases.get(case_id).deadline
    assert due is not None
    api.clock.advance(due.due_at - api.clock.now() + timedelta(minutes=1))
    sign_in(api, "merchant:m1")
    page = api.client.get(f"/console/cases/{case_id}")

    # when the merchant rejects it, which the passed deadline refuses
    answer = api.client.post(
        f"/console/cases/{case_id}/fire",
        data={
            "csrf_token": csrf_of(page.text),
            "version": "1",
            "trigger": "reject",
            "reason": "worn",
        },
    )

    # then the refusal names the deadline as the pages show times (before: ISO 8601 in UTC)
    assert answer.status_code == 422, answer.text
    berlin = views.local(due.due_at, ZoneInfo("Europe/Berlin"))
    assert f"review deadline passed at {berlin}" in html.unescape(answer.text), answer.text


def test_a_trigger_that_needs_a_reason_asks_for_one(api: Api) -> None:
    # given a merchant on a submitted case: reject needs a reason, approve does not
    case_id = api.submit()
    sign_in(api, "merchant:m1")
    page = api.client.get(f"/console/cases/{case_id}").text

    # then reject's reason is marked and required (before: "(optional)", then a 422)
    assert "Reason to reject (required)" in page
    assert re.search(r'id="reject-reason" name="reason"[^>]* required', page), page
    assert "Reason to approve (optional)" in page
    assert not re.search(r'id="approve-reason" name="reason"[^>]* required', page)


def test_an_action_the_state_refuses_is_a_409_page_leading_back_to_the_case(api: Api) -> None:
    # given a merchant on a submitted case
    case_id = api.submit()
    sign_in(api, "merchant:m1")
    page = api.client.get(f"/console/cases/{case_id}")

    # when a form asks for a trigger the state does not allow (the page's version is current)
    answer = api.client.post(
        f"/console/cases/{case_id}/fire",
        data={"csrf_token": csrf_of(page.text), "version": "1", "trigger": "confirm_receipt"},
    )

    # then a 409 page says what is allowed now and leads back to the case (before: the queue)
    assert answer.status_code == 409, answer.text
    assert "allowed now: approve, reject" in answer.text
    assert f'href="/console/cases/{case_id}">Back to the case</a>' in answer.text


def test_an_admin_extends_a_deadline_with_a_reason_and_a_merchant_cannot(api: Api) -> None:
    case_id = api.submit()
    due = api.cases.get(case_id).deadline
    assert due is not None
    sign_in(api, "merchant:m1")
    page = api.client.get(f"/console/cases/{case_id}")
    assert "Extend deadline" not in page.text
    refused = api.client.post(
        f"/console/cases/{case_id}/extend",
        data={"csrf_token": csrf_of(page.text), "version": "1", "hours": "24", "reason": "x"},
    )
    assert refused.status_code == 403

    sign_in(api, "admin")
    page = api.client.get(f"/console/cases/{case_id}")
    done = api.client.post(
        f"/console/cases/{case_id}/extend",
        data={"csrf_token": csrf_of(page.text), "version": "1", "hours": "24", "reason": "holiday"},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    moved = api.cases.get(case_id).deadline
    assert moved is not None and moved.due_at == due.due_at + timedelta(hours=24)
    assert api.cases.history(case_id)[-1].reason == "holiday"


def test_the_console_extends_by_the_configured_longest_extension(make_api: Any) -> None:
    # given a service whose longest extension is 60 days, not the default 30
    api = make_api(max_deadline_extension=timedelta(days=60))
    case_id = api.submit()
    due = api.cases.get(case_id).deadline
    assert due is not None
    sign_in(api, "admin")
    page = api.client.get(f"/console/cases/{case_id}")

    # then the form offers up to 1440 hours, and an extension by 1000 of them is made
    assert 'max="1440"' in page.text
    done = api.client.post(
        f"/console/cases/{case_id}/extend",
        data={"csrf_token": csrf_of(page.text), "version": "1", "hours": "1000", "reason": "x"},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    moved = api.cases.get(case_id).deadline
    assert moved is not None and moved.due_at == due.due_at + timedelta(hours=1000)


def test_sign_out_needs_its_csrf_token_and_ends_the_session(api: Api) -> None:
    sign_in(api, "admin")
    page = api.client.get("/console/queue")
    assert api.client.post("/console/sign-out", data={"x": "1"}).status_code == 403
    answer = api.client.post(
        "/console/sign-out", data={"csrf_token": csrf_of(page.text)}, follow_redirects=False
    )
    assert answer.status_code == 303
    assert api.client.get("/console/queue", follow_redirects=False).status_code == 303


def test_the_case_page_carries_the_diagram_text_of_aftersales_diagram(api: Api) -> None:
    # given a case and the CLI's diagram of its type with its state highlighted
    case_id = api.submit()
    printed = CliRunner().invoke(
        cli, ["diagram", "--type", "return_refund", "--current", "submitted"]
    )
    assert printed.exit_code == 0, printed.output
    sign_in(api, "admin")

    # when the case page is shown
    page = api.client.get(f"/console/cases/{case_id}")

    # then its mermaid block is that text
    found = re.search(r'<pre class="mermaid"[^>]*>(.*?)</pre>', page.text, re.DOTALL)
    assert found is not None
    assert html.unescape(found.group(1)).strip() == printed.output.strip()
