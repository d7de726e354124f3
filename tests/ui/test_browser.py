"""The web UI in a real browser (Debian's chromium, driven by Playwright),
over sessions recorded by real SDK processes: the list, search, a session's
tree from the keyboard, an LLM call's details, live updates from other
processes, escaping, no request beyond the page's origin, and the server's
sign-in keeping projects apart."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from conftest import ROOT, llm_cassette
from playwright.sync_api import expect
from server_support import make_key

pytestmark = pytest.mark.timeout(240)

LIVE = 15_000  # ms: pages poll every 2 s; generous on a loaded machine


def _only_own_origin(page, origin: str) -> None:
    foreign = [u for u in page.requests
               if not u.startswith(("data:", "about:")) and
               f"{urlsplit(u).scheme}://{urlsplit(u).netloc}" != origin]
    assert foreign == [], foreign
    assert page.problems == [], page.problems  # no script error, no CSP violation


def test_list_search_open_a_session_and_an_llm_calls_details(ui, agent, page) -> None:
    trip = agent("trip", str(llm_cassette()))
    agent("handover", trip)
    agent("new", "你好世界 greeting", "说你好 to the user")
    agent("new", "Quarterly report")
    p = page.page
    p.goto(ui.url + "/")

    table = p.get_by_role("table")
    headers = table.get_by_role("columnheader")
    assert headers.all_inner_texts()[:4] == ["SESSION", "STATUS", "AGENT", "STARTED"]
    assert headers.nth(3).get_attribute("aria-sort") == "descending"
    rows = table.locator("tbody tr")
    assert rows.count() == 3
    trip_row = rows.filter(has_text="Plan a weekend in Kyoto")
    assert trip_row.locator(".status").inner_text() == "successful"
    assert re.fullmatch(r"\$0\.0\d+", trip_row.locator("td").last.inner_text())

    search = p.get_by_label("Search")
    search.fill("你好")
    expect(rows).to_have_count(1)
    assert "你好世界 greeting" in rows.first.inner_text()
    assert "q=%E4%BD%A0%E5%A5%BD" in p.url  # the search is in the address, to share
    search.fill("GPT-3.5")  # the model of the replayed call, in another case
    expect(rows.first).to_contain_text("Kyoto")
    assert rows.count() == 1

    _click_as_a_person(p, rows.first.get_by_role("link"))
    p.wait_for_url(re.compile(r"/sessions/"))
    assert p.get_by_role("heading", level=1).inner_text() == "Plan a weekend in Kyoto 京都"
    tree = p.get_by_role("tree")
    items = tree.get_by_role("treeitem")
    assert items.count() == 9  # 4 steps, 5 events
    assert p.locator(".writer-card").count() == 2  # two processes wrote it
    assert p.locator(".handover").count() == 1

    llm = items.filter(has=p.locator(".kind", has_text="llm"))
    llm.click()
    detail = p.locator("#detail")
    detail.get_by_role("heading", name=re.compile("openai")).wait_for()
    facts = detail.locator(".facts").text_content() or ""
    assert "Requested model" in facts and "gpt-3.5-turbo" in facts and "Input tokens" in facts
    conversation = detail.locator(".conversation")
    assert conversation.first.locator(".msg-role").first.inner_text().lower() == "user"
    assert conversation.nth(1).locator(".msg").count() >= 1
    _only_own_origin(page, ui.url)


def _click_as_a_person(p, locator) -> None:
    """A click held as long as a person holds one (Playwright's own click
    lets go at once, inside the time a page has to change under it)."""
    locator.hover()
    p.mouse.down()
    p.wait_for_timeout(150)
    p.mouse.up()


def test_filters_narrow_the_list_and_a_result_clicked_after_typing_opens(ui, agent, page) -> None:
    agent("new", "Quarterly report")
    agent("failing", check=False)
    p = page.page
    p.goto(ui.url + "/")
    rows = p.get_by_role("table").locator("tbody tr")
    expect(rows).to_have_count(2)

    p.get_by_label("Status").select_option("failed")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Nightly report")
    assert "status=failed" in p.url
    p.get_by_label("Status").select_option("")
    p.get_by_label("Agent").select_option("support-bot")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Quarterly report")
    assert "agent=support-bot" in p.url

    p.get_by_label("Agent").select_option("")
    expect(rows).to_have_count(2)
    p.get_by_label("Search").fill("Quarterly")
    expect(rows).to_have_count(1)
    def searches() -> int:  # the list fetched for the search (not its live poll)
        return len([u for u in page.requests if u.startswith(f"{ui.url}/?q=Quarterly")])

    asked = searches()
    # The search box losing focus on the mouse-down must not fetch the list
    # again: the list swapped in took the link from under the mouse-up.
    _click_as_a_person(p, rows.first.get_by_role("link"))
    p.wait_for_url(re.compile(r"/sessions/"))
    assert p.get_by_role("heading", level=1).inner_text() == "Quarterly report"
    assert searches() == asked >= 1


def test_a_search_answered_during_a_held_click_waits_for_the_button(ui, agent, page) -> None:
    # The search box asks for the list 350 ms after the last key, so its
    # answer can arrive while a result is being clicked: swapped in between
    # the mouse-down and the mouse-up, it would take the link from under the
    # click. It waits for the button (it was dropped, the list left on the
    # old results: the second half).
    agent("new", "Quarterly report")
    agent("new", "Weekly digest")
    p = page.page
    p.goto(ui.url + "/")
    rows = p.get_by_role("table").locator("tbody tr")
    expect(rows).to_have_count(2)
    with p.expect_response(lambda r: r.url.startswith(f"{ui.url}/?q=Quarterly"), timeout=LIVE):
        p.get_by_label("Search").fill("Quarterly")
        rows.filter(has_text="Quarterly report").get_by_role("link").hover()
        p.mouse.down()
    p.wait_for_timeout(300)  # time enough to swap the answer in
    p.mouse.up()
    p.wait_for_url(re.compile(r"/sessions/"))
    assert p.get_by_role("heading", level=1).inner_text() == "Quarterly report"

    # Held anywhere else, the search's answer is asked for again once let go:
    # the list follows what was typed, and the address too.
    p.goto(ui.url + "/")
    expect(rows).to_have_count(2)
    with p.expect_response(lambda r: r.url.startswith(f"{ui.url}/?q=Weekly"), timeout=LIVE):
        p.get_by_label("Search").fill("Weekly")
        p.get_by_role("heading", level=1).hover()
        p.mouse.down()
    p.wait_for_timeout(300)
    assert rows.count() == 2  # not while the button is held
    p.mouse.up()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Weekly digest")
    assert "q=Weekly" in p.url
    _only_own_origin(page, ui.url)


def test_the_tree_works_from_the_keyboard(ui, agent, page) -> None:
    trip = agent("trip", str(llm_cassette()))
    p = page.page
    p.goto(f"{ui.url}/sessions/{trip}")
    items = p.locator("#tree .node")  # by position, hidden ones included
    first = items.first
    first.focus()
    assert first.get_attribute("aria-expanded") == "true"
    p.keyboard.press("ArrowLeft")  # collapse the first step
    assert first.get_attribute("aria-expanded") == "false"
    assert items.nth(1).is_hidden()
    p.keyboard.press("ArrowRight")
    assert items.nth(1).is_visible()
    p.keyboard.press("ArrowDown")
    assert p.evaluate("document.activeElement.getAttribute('aria-level')") == "2"
    p.keyboard.press("Enter")
    p.locator("#detail .record").wait_for()
    assert items.nth(1).get_attribute("aria-selected") == "true"
    p.keyboard.press("ArrowLeft")  # to the parent step
    assert p.evaluate("document.activeElement.getAttribute('aria-level')") == "1"
    p.get_by_role("button", name="Collapse all").click()
    assert items.filter(has=p.locator(".kind", has_text="llm")).is_hidden()
    assert p.get_by_role("treeitem").count() == 3  # the three top-level steps


def test_pages_follow_other_processes_writing_the_store(ui, agent, page) -> None:
    p = page.page
    p.goto(ui.url + "/")
    assert "No sessions recorded yet" in p.locator("#sessions").inner_text()

    running = agent("trip")  # started by another process: appears in the open list
    p.locator(f'a[href="/sessions/{running}"]').wait_for(timeout=LIVE)
    row = p.locator("tbody tr").filter(has_text="Kyoto")
    assert row.locator(".status").inner_text() == "running"

    p.goto(f"{ui.url}/sessions/{running}")
    before = p.get_by_role("treeitem").count()
    agent("step", running, "Compare ryokan prices")  # another process adds a step
    p.get_by_role("treeitem").filter(has_text="Compare ryokan prices").first.wait_for(timeout=LIVE)
    assert p.get_by_role("treeitem").count() == before + 2
    assert p.locator(".writer-card").count() == 2

    agent("end", running)  # and ends it: the status changes in place
    p.locator("#session-head .status-successful").wait_for(timeout=LIVE)
    p.go_back()
    p.locator("tbody tr .status-successful").wait_for(timeout=LIVE)
    _only_own_origin(page, ui.url)


@contextlib.contextmanager
def _change_answered(p, path: str) -> Iterator[None]:
    """Around a write by another process: then wait until a live poll of
    ``path`` has answered with a change (200, not 204), and time enough to
    swap it in. Any poll answered after the write began counts: the write is
    stored before the writing process has exited, so a poll sent in between
    brings it, and the poll after that rightly has nothing new (waiting for
    the first poll sent after the process exited failed so, under load)."""
    changes: list[object] = []

    def answered(response) -> None:
        if path in response.url and response.status == 200:
            changes.append(response)

    p.on("response", answered)
    try:
        yield
        waited = 0
        while not changes and waited < LIVE:
            p.wait_for_timeout(50)  # (Playwright delivers events while it waits)
            waited += 50
        assert changes, f"no poll of {path} brought the change"
    finally:
        p.remove_listener("response", answered)
    p.wait_for_timeout(300)


def test_a_click_held_while_a_live_update_arrives_is_not_lost(ui, agent, page) -> None:
    # Live updates replace the tree (and the list). One that arrived between
    # a mouse-down and its mouse-up took the row from under the click, and
    # the click was lost: an update waits until the button is let go.
    running = agent("trip")
    p = page.page
    p.goto(f"{ui.url}/sessions/{running}")
    row = p.get_by_role("treeitem").first
    row.locator("a.label").hover()
    p.mouse.down()
    with _change_answered(p, "/live?"):
        agent("step", running, "Compare ryokan prices")  # another process adds a step
    p.mouse.up()
    p.locator("#detail .record").wait_for()  # the click opened the row's details
    assert row.get_attribute("aria-selected") == "true"
    # and the update comes with the next poll
    p.get_by_role("treeitem").filter(has_text="Compare ryokan prices").first.wait_for(timeout=LIVE)

    p.goto(ui.url + "/")  # the list, as another session starts
    p.locator(f'a[href="/sessions/{running}"]').hover()
    p.mouse.down()
    with _change_answered(p, "/ui/sessions?"):
        agent("new", "Quarterly report")
    p.mouse.up()
    p.wait_for_url(re.compile(r"/sessions/"))
    p.go_back()
    p.locator("tbody tr").filter(has_text="Quarterly report").wait_for(timeout=LIVE)

    # The right button opens a menu, not the link: updates go on while it is held.
    p.locator(f'a[href="/sessions/{running}"]').hover()
    p.mouse.down(button="right")
    agent("new", "Monthly summary")
    p.locator("tbody tr").filter(has_text="Monthly summary").wait_for(timeout=LIVE)
    p.mouse.up(button="right")

    # A button let go outside the window sends the page no mouse-up: the
    # window losing focus counts as letting go, or updates would wait for ever.
    p.get_by_role("heading", level=1).hover()
    p.mouse.down()
    p.evaluate("window.dispatchEvent(new Event('blur'))")
    agent("new", "Weekly digest")
    p.locator("tbody tr").filter(has_text="Weekly digest").wait_for(timeout=LIVE)
    p.mouse.up()
    _only_own_origin(page, ui.url)


def test_markup_in_recorded_text_shows_as_text(ui, agent, page) -> None:
    sid = agent("html")
    p = page.page
    dialogs: list[str] = []
    p.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    p.goto(ui.url + "/")
    link = p.locator(f'a[href="/sessions/{sid}"]')
    assert link.inner_text() == "<script>alert('name')</script><b>bold?</b>"
    assert p.locator("td b").count() == 0
    link.click()
    p.get_by_role("treeitem").last.click()
    p.locator("#detail .record").wait_for()
    assert "<script>document.title='pwned'</script>" in p.locator("#detail").inner_text()
    assert p.title() != "pwned" and dialogs == []
    assert p.locator("#detail h1").count() == 0
    _only_own_origin(page, ui.url)


def test_a_session_of_ten_thousand_events_opens_with_a_window_of_its_tree(
        ui, agent, page) -> None:
    sid = agent("big", "10000")
    p = page.page
    p.goto(f"{ui.url}/sessions/{sid}")
    assert "100 steps · 10,000 events" in p.locator("#tree-count").inner_text()
    shown = p.get_by_role("treeitem").count()
    assert 0 < shown <= 300  # a window, not ten thousand rows
    p.locator("#tree .more").scroll_into_view_if_needed()
    expect(p.get_by_role("treeitem")).to_have_count(min(shown + 300, 10_100))
    p.get_by_role("treeitem").nth(5).click()
    p.locator("#detail .record").wait_for()  # details load on demand
    _only_own_origin(page, ui.url)


def test_dashboard_shows_charts_and_their_numbers(ui, agent, page) -> None:
    agent("handover", agent("trip", str(llm_cassette())))  # successful
    agent("failing", check=False)                          # failed
    p = page.page
    p.goto(ui.url + "/dashboard")
    assert p.locator("svg.chart-svg").count() == 3
    models = p.get_by_role("table").filter(has_text="Latency p50")
    assert "gpt-3.5-turbo" in models.inner_text()
    assert "50.0%" in p.locator(".kpi").filter(has_text="Sessions failed").inner_text()
    _only_own_origin(page, ui.url)


#: An LLM call of a billion and a quarter tokens and a tool that cost a
#: fortieth of a cent: the value axes' longest labels and smallest costs.
HUGE_CALL_AND_A_CHEAP_TOOL = """
import lucidic as lai
from lucidic.plugins import start_llm_call
lai.init(session_name="huge")
call = start_llm_call("openai", request_model="m")
call.finish(model="m", input_tokens=1_250_000_000, output_tokens=1, cost=0.0002)
lai.create_event(description="tool", cost_added=0.000025)
lai.end_session(is_successful=True)
"""


def test_dashboard_axes_label_every_gridline_in_full_and_costs_beside_llm_calls(
        ui, lucidic_home, page) -> None:
    from helpers import run_python

    run_python(HUGE_CALL_AND_A_CHEAP_TOOL, home=lucidic_home)
    p = page.page
    p.goto(ui.url + "/dashboard")
    charts = {name: p.locator("figure.chart").filter(has_text=name)
              for name in ("Cost per day", "Tokens per day", "LLM calls per day")}
    labels = {name: chart.locator("text.axis").all_text_contents()[:3]
              for name, chart in charts.items()}
    # One call: the middle gridline is 1 (it was 0.5, labelled "0", twice).
    assert labels["LLM calls per day"] == ["0", "1", "2"]
    assert labels["Tokens per day"] == ["0", "1B", "2B"]
    assert labels["Cost per day"] == ["$0", "$0.000125", "$0.00025"]
    plot_lefts = set()
    for name, chart in charts.items():
        # Each label within the chart's drawing (a long one began left of it,
        # cut off) and the plot right of every label.
        lefts = chart.locator("text.axis").evaluate_all(
            "texts => texts.map(t => [t.getBBox().x, t.getBBox().x + t.getBBox().width])")
        plot_left = float(chart.locator("line.grid").first.get_attribute("x1") or 0)
        assert all(start >= 0 and end <= plot_left for start, end in lefts[:3]), (name, lefts)
        plot_lefts.add(plot_left)
    assert len(plot_lefts) == 1  # the three plots, one above another, aligned
    cost = p.locator(".kpi").filter(has_text="Cost")
    expect(cost.locator(".kpi-value")).to_have_text("$0.000225")
    expect(cost.locator(".kpi-note")).to_have_text("LLM calls $0.0002 · other events $0.000025")
    _only_own_origin(page, ui.url)


def test_the_dashboard_says_how_many_llm_calls_reported_no_usage(
        ui, agent, lucidic_home, page) -> None:
    """A stream cut before its usage came reports no token counts and no
    cost: the dashboard's sums (in all, by day, by model) leave it out and
    say how many calls that was, and show "unknown" while no call reported
    any, not a measured 0."""
    from helpers import CUT_STREAM, run_python

    run_python(CUT_STREAM, home=lucidic_home, args=[str(ROOT / "tests" / "providers")])
    p = page.page
    p.goto(ui.url + "/dashboard")
    cost, tokens = (p.locator(".kpi").filter(has_text=name) for name in ("Cost", "Tokens"))
    expect(cost.locator(".kpi-value")).to_have_text("unknown")
    expect(cost.locator(".kpi-note")).to_have_text("not known for 1 LLM call")
    expect(tokens.locator(".kpi-value")).to_have_text("unknown")
    expect(tokens.locator(".kpi-note")).to_have_text("none reported for 1 LLM call")
    models = p.get_by_role("table").filter(has_text="Latency p50")
    expect(models.get_by_role("columnheader")).to_contain_text(
        ["Model", "Calls", "Input tokens", "Output tokens", "Without tokens", "Cost",
         "Without cost", "Errors"])
    cut = models.get_by_role("row").filter(has_text="unknown")   # the cut stream's model
    expect(cut.get_by_role("rowheader")).to_have_text(re.compile("^gpt-4"))
    expect(cut.get_by_role("cell")).to_contain_text(
        ["1", "unknown", "unknown", "1 call", "unknown", "1 call", "0"])
    today = p.get_by_role("table").filter(has_text="None reported for").get_by_role("row").nth(1)
    expect(today.get_by_role("cell")).to_have_text(["unknown", "unknown", "1 LLM call"])
    days = p.get_by_role("table").filter(has_text="Not known for").get_by_role("row")
    expect(days.nth(1).get_by_role("cell")).to_have_text(["unknown", "1 LLM call"])
    expect(days.nth(2).get_by_role("cell")).to_have_text(["$0", ""])  # no calls that day

    agent("handover", agent("trip", str(llm_cassette())))   # a call that reported its usage
    p.reload()
    expect(tokens.locator(".kpi-value")).to_have_text(re.compile(r"^[1-9][\d,]*$"))
    expect(tokens.locator(".kpi-note")).to_have_text("none reported for 1 LLM call")
    expect(today.get_by_role("cell").nth(0)).to_have_text(re.compile(r"^[1-9][\d,]*$"))
    expect(today.get_by_role("cell").nth(2)).to_have_text("1 LLM call")
    expect(cut.get_by_role("cell")).to_contain_text(
        ["1", "unknown", "unknown", "1 call", "unknown", "1 call", "0"])
    _only_own_origin(page, ui.url)


def test_signing_in_with_one_projects_key_shows_nothing_of_anothers(
        db_url, start_server, agent, browser) -> None:
    from conftest import Page

    server = start_server(db_url)
    keys = {name: make_key(db_url, name) for name in ("alpha", "beta")}
    for name, key in keys.items():
        agent("new", f"{name} session",
              env={"LUCIDIC_BASE_URL": server.url, "LUCIDIC_API_KEY": key})
    for name, other in (("alpha", "beta"), ("beta", "alpha")):
        opened = Page(browser)
        try:
            p = opened.page
            p.goto(server.url + "/")
            assert urlsplit(p.url).path == "/sign-in"
            assert "session" not in p.locator("main").inner_text().replace("sessions", "")
            p.get_by_label("API key").fill(keys[name])
            p.get_by_role("button", name="Sign in").click()
            p.wait_for_url(server.url + "/")
            text = p.locator("main").inner_text()
            assert f"{name} session" in text and f"{other} session" not in text
            assert keys[name] not in p.content() and keys[name] not in p.url
            cookies = opened.context.cookies()
            assert [(c["httpOnly"], c["sameSite"]) for c in cookies] == [(True, "Strict")]
            assert p.evaluate("document.cookie") == ""  # not readable by any script
            p.get_by_role("button", name="Sign out").click()
            p.wait_for_url(re.compile("/sign-in"))
            p.goto(server.url + "/")
            assert urlsplit(p.url).path == "/sign-in"
            _only_own_origin(opened, server.url)
        finally:
            opened.close()


def test_api_docs_render_offline(sqlite_url, start_server, page) -> None:
    server = start_server(sqlite_url)
    p = page.page
    p.goto(server.url + "/docs")
    p.get_by_text("/api/v1/sessions").first.wait_for()
    _only_own_origin(page, server.url)


def test_a_page_on_one_replica_follows_writes_through_another(
        db_url, start_server, agent, browser) -> None:
    """Two servers on one database: what arrives through one shows on a page
    served by the other, so the change comes from the database."""
    from conftest import Page

    reading, writing = start_server(db_url), start_server(db_url)
    key = make_key(db_url, "shared")
    opened = Page(browser)
    try:
        p = opened.page
        p.goto(reading.url + "/sign-in")
        p.get_by_label("API key").fill(key)
        p.get_by_role("button", name="Sign in").click()
        p.wait_for_url(reading.url + "/")
        env = {"LUCIDIC_BASE_URL": writing.url, "LUCIDIC_API_KEY": key}
        sid = agent("trip", env=env)
        p.locator(f'a[href="/sessions/{sid}"]').wait_for(timeout=LIVE)
        p.goto(f"{reading.url}/sessions/{sid}")
        agent("step", sid, "Written through the other replica", env=env)
        p.get_by_role("treeitem").filter(
            has_text="Written through the other replica").first.wait_for(timeout=LIVE)
        _only_own_origin(opened, reading.url)
    finally:
        opened.close()


def test_an_open_session_page_says_when_the_session_is_deleted(ui, agent, page,
                                                                lucidic_home) -> None:
    import subprocess
    import sys

    from helpers import child_env

    sid = agent("new", "Refund request #4471", "refund order 4471")
    kept = agent("new", "Another one")
    p = page.page
    listing = page.context.new_page()
    listing.goto(ui.url + "/")
    listing.locator(f'a[href="/sessions/{sid}"]').wait_for()
    p.goto(f"{ui.url}/sessions/{sid}")
    expect(p.locator("#session-head")).to_contain_text("Refund request #4471")
    deleted = subprocess.run([sys.executable, "-m", "lucidic", "sessions", "delete", sid,
                              "--force"], capture_output=True, text=True, timeout=60,
                             env=child_env(lucidic_home), cwd=ROOT)
    assert deleted.returncode == 0, deleted.stderr
    banner = p.locator("#session-live")
    expect(banner).to_contain_text("This session was deleted", timeout=LIVE)
    expect(listing.locator(f'a[href="/sessions/{sid}"]')).to_have_count(0, timeout=LIVE)
    expect(listing.locator(f'a[href="/sessions/{kept}"]')).to_have_count(1)
    _only_own_origin(page, ui.url)


def test_the_delete_button_of_lucidic_ui_deletes_the_session(ui, agent, page) -> None:
    sid = agent("new", "Refund request #4471", "refund order 4471")   # (ended)
    p = page.page
    p.goto(f"{ui.url}/sessions/{sid}")
    p.get_by_text("Delete this session").click()
    p.get_by_role("button", name="Delete for good").click()
    expect(p.get_by_role("heading", name="This session was deleted")).to_be_visible()
    p.goto(ui.url + "/")
    expect(p.locator(f'a[href="/sessions/{sid}"]')).to_have_count(0)
    assert [u for u in page.problems if "410" not in u] == []
