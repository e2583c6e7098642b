"""Defects found by an outside review of the dashboard, each pinned by a test."""

from __future__ import annotations

from tests.web.web_client import Web, csrf_of


async def test_a_date_filter_at_the_end_of_the_calendar_is_no_internal_error(web: Web) -> None:
    run_id = await web.start("echo", {"topic": "x"})
    client = await web.signed_in()
    response = await client.get("/?until=9999-12-31")
    assert response.status_code == 200
    assert f'data-run="{run_id}"' in response.text


async def test_a_form_posted_after_the_session_ended_signs_in_back_to_its_page(web: Web) -> None:
    run_id = await web.start("echo", {"topic": "x"})
    client = await web.signed_in()
    token = csrf_of((await client.get(f"/runs/{run_id}")).text)
    client.cookies.delete("am_session")
    response = await client.post(
        f"/runs/{run_id}/cancel",
        data={"csrf_token": token},
        headers={"Referer": f"http://test/runs/{run_id}"},
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/login?next=%2Fruns%2F{run_id}"
    elsewhere = await client.post(
        "/approvals/decide", headers={"Referer": "https://evil.example/runs/x"}
    )
    assert elsewhere.headers["location"] == "/login"
