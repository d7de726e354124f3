"""The web UI's pages over HTTP, against real `lucidic ui` and `lucidic
server` processes: what they show, what they escape, which requests they
refuse, and the server's sign-in."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import requests
from server_support import make_key

from helpers import run_python
from lucidic.store import Store
from lucidic.ui import assets

ROOT = Path(__file__).resolve().parents[2]


def test_lucidic_ui_lists_the_embedded_store_with_security_headers(ui, agent) -> None:
    sid = agent("new", "Refund request #4471", "refund order 4471")
    response = requests.get(ui.url + "/", timeout=10)
    assert response.status_code == 200
    assert "Refund request #4471" in response.text and f"/sessions/{sid}" in response.text
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["x-frame-options"] == "DENY"
    assert not any(h.lower().startswith("access-control-") for h in response.headers)
    # No page names another origin: every script, style and image is ours.
    assert not re.search(r"(src|href)=\"(https?:)?//", response.text)


def test_recorded_text_that_looks_like_html_is_escaped(ui, agent) -> None:
    sid = agent("html")
    listing = requests.get(ui.url + "/", timeout=10).text
    assert "<script>alert('name')</script>" not in listing
    assert "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;&lt;b&gt;bold?&lt;/b&gt;" in listing
    page = requests.get(f"{ui.url}/sessions/{sid}", timeout=10).text
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<u>reason</u>" not in page and "&lt;u&gt;reason&lt;/u&gt;" in page
    tree = requests.get(f"{ui.url}/sessions/{sid}", timeout=10).text
    event_id = re.search(r'href="/events/([^"]+)"', tree).group(1)  # type: ignore[union-attr]
    detail = requests.get(f"{ui.url}/events/{event_id}", timeout=10).text
    assert "<script>document.title" not in detail
    assert "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;" in detail
    assert "<h1>not a heading</h1>" not in detail


def test_lucidic_ui_answers_only_its_own_address(ui) -> None:
    for host in ("127.0.0.1", "localhost", f"127.0.0.1:{ui.port}", f"localhost:{ui.port}"):
        assert requests.get(ui.url + "/", headers={"Host": host}, timeout=10).status_code == 200
    # A DNS-rebinding page reaches us under its own name: refused.
    for host in ("attacker.example", f"attacker.example:{ui.port}", "127.0.0.1.nip.io"):
        response = requests.get(ui.url + "/", headers={"Host": host}, timeout=10)
        assert response.status_code == 421, host
        assert "Refund" not in response.text


def test_lucidic_ui_with_allow_host_answers_that_name_too(lucidic_home, tmp_path) -> None:
    from conftest import UiProcess

    process = UiProcess(lucidic_home, tmp_path / "ui.log", ["--allow-host", "box.lan"])
    try:
        ok = requests.get(process.url + "/", headers={"Host": f"box.lan:{process.port}"},
                          timeout=10)
        other = requests.get(process.url + "/", headers={"Host": "other.lan"}, timeout=10)
        assert (ok.status_code, other.status_code) == (200, 421)
    finally:
        process.stop()


def test_cross_site_form_posts_are_refused(ui) -> None:
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": "null"}):
        response = requests.post(ui.url + "/sign-out", headers=headers, timeout=10)
        assert response.status_code == 403, headers
    same = requests.post(ui.url + "/sign-out", headers={"Origin": ui.url},
                         allow_redirects=False, timeout=10)
    assert same.status_code == 303


def test_unknown_ids_are_a_clear_404(ui) -> None:
    for path in ("/sessions/no-such-session", "/events/nope", "/steps/nope"):
        response = requests.get(ui.url + path, timeout=10)
        assert response.status_code == 404 and "No such" in response.text
    bad_cursor = requests.get(ui.url + "/?cursor=garbage", timeout=10)
    assert bad_cursor.status_code == 200 and "cursor" in bad_cursor.text


def test_lucidic_ui_says_what_to_install_when_the_extra_is_missing(lucidic_home) -> None:
    result = run_python("""
        import sys
        sys.modules["jinja2"] = None   # as if the server extra were not installed
        from lucidic.cli import main
        main(["ui", "--port", "0"])
    """, home=lucidic_home, check=False)
    assert result.returncode != 0
    assert "pip install 'lucidic-toolkit[server]'" in result.stderr and "jinja2" in result.stderr


def test_lucidic_ui_says_when_its_port_is_taken(ui, lucidic_home) -> None:
    result = subprocess.run([sys.executable, "-m", "lucidic", "ui", "--port", str(ui.port)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env={"LUCIDIC_HOME": str(lucidic_home), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0 and "--port" in result.stderr


def test_every_vendored_file_matches_its_recorded_checksum() -> None:
    entries = assets.vendored()
    assert {e["package"] for e in entries} == {"htmx.org", "swagger-ui-dist"}
    assert all(e["version"] and e["license"] for e in entries)
    assert assets.check_vendored() == []


def test_server_pages_need_a_sign_in_and_show_only_that_projects_data(
        db_url, start_server, agent) -> None:
    server = start_server(db_url)
    key_a, key_b = make_key(db_url, "alpha"), make_key(db_url, "beta")
    env = {"LUCIDIC_BASE_URL": server.url}
    a = agent("new", "alpha's secret plan", env={**env, "LUCIDIC_API_KEY": key_a})
    b = agent("new", "beta's roadmap", env={**env, "LUCIDIC_API_KEY": key_b})

    anonymous = requests.Session()
    for path in ("/", f"/sessions/{a}", "/dashboard", "/ui/sessions"):
        response = anonymous.get(server.url + path, allow_redirects=False, timeout=10)
        assert response.status_code == 303 and response.headers["location"].startswith(
            "/sign-in"), path
    form = anonymous.get(server.url + "/sign-in", timeout=10).text
    assert 'for="api_key">API key</label>' in form and "alpha" not in form

    wrong = anonymous.post(server.url + "/sign-in", data={"api_key": "lk_wrong"},
                           allow_redirects=False, timeout=10)
    assert wrong.status_code == 401 and "not valid" in wrong.text

    browser = requests.Session()
    signed = browser.post(server.url + "/sign-in", data={"api_key": key_a, "next": "/"},
                          allow_redirects=False, timeout=10)
    assert signed.status_code == 303
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert key_a not in cookie and key_a not in signed.headers["location"]
    listing = browser.get(server.url + "/", timeout=10).text
    assert "alpha&#39;s secret plan" in listing and "beta" not in listing
    assert key_a not in listing
    assert browser.get(f"{server.url}/sessions/{b}", timeout=10).status_code == 404
    assert browser.get(f"{server.url}/sessions/{a}", timeout=10).status_code == 200

    # The JSON API keeps working with the key, as before.
    api = requests.get(server.url + "/api/v1/sessions",
                       headers={"Authorization": f"Bearer {key_b}"}, timeout=10).json()
    assert [s["name"] for s in api["sessions"]] == ["beta's roadmap"]

    browser.post(server.url + "/sign-out", allow_redirects=False, timeout=10)
    after = browser.get(server.url + "/", allow_redirects=False, timeout=10)
    assert after.status_code == 303
    # The old cookie is dead on the server too, not just forgotten by the browser.
    token = re.search(r"lucidic_signin=([^;]+)", cookie).group(1)  # type: ignore[union-attr]
    replay = requests.get(server.url + "/", cookies={"lucidic_signin": token},
                          allow_redirects=False, timeout=10)
    assert replay.status_code == 303


def test_revoking_the_key_ends_its_sign_ins(sqlite_url, start_server) -> None:
    from lucidic.store import Store

    server = start_server(sqlite_url)
    store = Store(sqlite_url)
    info, key = store.create_api_key("gamma")
    browser = requests.Session()
    browser.post(server.url + "/sign-in", data={"api_key": key}, timeout=10)
    assert browser.get(server.url + "/", allow_redirects=False, timeout=10).status_code == 200
    store.revoke_api_key(info["id"])
    store.close()
    assert browser.get(server.url + "/", allow_redirects=False, timeout=10).status_code == 303


def test_server_docs_work_offline_from_vendored_files(sqlite_url, start_server) -> None:
    server = start_server(sqlite_url)
    page = requests.get(server.url + "/docs", timeout=10)
    assert page.status_code == 200
    assets_used = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert all(a.startswith("/") and not a.startswith("//") for a in assets_used)
    assert {a.split("?")[0] for a in assets_used} >= {
        "/static/vendor/swagger-ui-5.35.0/swagger-ui-bundle.js",
        "/static/vendor/swagger-ui-5.35.0/swagger-ui.css", "/static/docs.js"}
    for asset in assets_used:
        assert requests.get(server.url + asset, timeout=10).status_code == 200
    assert requests.get(server.url + "/openapi.json", timeout=10).json()["paths"]


# A 1x1 PNG, as an SDK records a screenshot (base64).
PIXEL = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJ"
         "RU5ErkJggg==")


def test_screenshots_show_as_images_and_nothing_else_becomes_one(ui, lucidic_home) -> None:
    from lucidic.store import Store

    store = Store(lucidic_home / "lucidic.db")
    store.write([
        ("session", "shots", 1.0, {"project": "default", "started_at": 1.0, "name": "shots"}),
        ("step", "st", 1.0, {"session_id": "shots", "action": "look", "screenshot": PIXEL,
                             "started_at": 1.0}),
        ("event", "ev", 1.0, {"session_id": "shots", "step_id": "st", "started_at": 1.0,
                              "screenshots": [PIXEL, "javascript:alert(1)",
                                              "data:text/html;base64,PHNjcmlwdD4="]}),
    ])
    store.close()
    step = requests.get(ui.url + "/steps/st", timeout=10).text
    assert f'src="data:image/png;base64,{PIXEL}"' in step
    event = requests.get(ui.url + "/events/ev", timeout=10).text
    assert event.count("<img") == 1 and f'src="data:image/png;base64,{PIXEL}"' in event
    assert "javascript:" not in event.split("<img")[1].split(">")[0]
    assert "is not an image this page can show" in event


def test_a_step_its_session_outlived_shows_as_did_not_end(ui, lucidic_home) -> None:
    from helpers import STEP_NEVER_ENDED

    sid = run_python(STEP_NEVER_ENDED, home=lucidic_home).stdout.split()[0]
    page = requests.get(f"{ui.url}/sessions/{sid}", timeout=10).text
    row = re.search(r'<div class="node kind-step[^"]*"[^>]*>(?:(?!<div class="node).)*'
                    r'background poll(?:(?!<div class="node).)*', page, re.S)
    assert row is not None
    assert "did not end" in row.group(0) and "…" not in row.group(0)
    step_id = re.search(r'href="/steps/([^"]+)"[^>]*>background poll', page).group(1)  # type: ignore[union-attr]
    detail = requests.get(f"{ui.url}/steps/{step_id}", timeout=10).text
    assert "did not end: its session ended first" in detail and "running" not in detail


def test_a_session_whose_llm_call_reported_no_usage_shows_it_unknown_not_zero(
        ui, lucidic_home) -> None:
    from helpers import CUT_STREAM

    sid = run_python(CUT_STREAM, home=lucidic_home,
                     args=[str(ROOT / "tests" / "providers")]).stdout.split()[0]
    page = requests.get(f"{ui.url}/sessions/{sid}", timeout=10).text
    totals = re.search(r'<dl class="totals">.*?</dl>', page, re.S).group(0)  # type: ignore[union-attr]
    assert "0 in" not in totals and "$0" not in totals
    assert ("<dt>Tokens</dt><dd title=\"input, output\">unknown <span class=\"muted\">"
            "(none reported for 1 LLM call)</span></dd>") in totals
    assert ("<dt>Cost</dt><dd>unknown <span class=\"muted\">(not known for 1 LLM call)"
            "</span></dd>") in totals
    row = re.search(rf'<tr[^>]*>(?:(?!</tr>).)*/sessions/{sid}(?:(?!</tr>).)*</tr>',
                    requests.get(ui.url + "/", timeout=10).text, re.S).group(0)  # type: ignore[union-attr]
    cells = re.findall(r'<td class="num"[^>]*>([^<]*)</td>', row)
    assert cells[-2:] == ["—", "—"]  # tokens, cost: unknown, not 0


def test_lucidic_ui_over_another_database_names_it_in_the_header_and_not_its_password(
        lucidic_home: Path, tmp_path: Path) -> None:
    """`lucidic ui --db` reads a database that is not this machine's embedded
    store (a server's): the header says which, and the password a URL may
    carry is printed nowhere."""
    from conftest import UiProcess

    database = tmp_path / "team-server.db"
    Store(f"sqlite:///{database}").close()
    process = UiProcess(lucidic_home, tmp_path / "ui.log", ["--db", f"sqlite:///{database}"])
    try:
        page = requests.get(process.url + "/", timeout=30)
        assert page.status_code == 200
        assert "SQLite team-server.db" in page.text and "Embedded store" not in page.text
        assert f"lucidic ui reads sqlite:///{database}" in page.text
    finally:
        process.stop()
    own = UiProcess(lucidic_home, tmp_path / "own.log")
    try:
        assert "Embedded store" in requests.get(own.url + "/", timeout=30).text
    finally:
        own.stop()


def test_a_postgresql_database_is_named_by_its_name_and_host_without_its_password() -> None:
    from lucidic import cli

    url = "postgresql://lucidic:s3cret@db.lan:5432/agents"
    assert cli._short_name(url) == "PostgreSQL agents on db.lan"
    assert cli._shown_url(url) == "postgresql://lucidic:***@db.lan:5432/agents"


def _delete(lucidic_home: Path, *ids: str) -> None:
    from helpers import child_env

    result = subprocess.run([sys.executable, "-m", "lucidic", "sessions", "delete", *ids,
                             "--force"], capture_output=True, text=True, timeout=60,
                            env=child_env(lucidic_home), cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_a_deleted_sessions_page_says_it_was_deleted(ui, agent, lucidic_home) -> None:
    sid = agent("new", "Refund request #4471", "refund order 4471")
    kept = agent("new", "Another one")
    page = requests.get(f"{ui.url}/sessions/{sid}", timeout=10)
    version = re.search(r'data-version="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    _delete(lucidic_home, sid)
    listing = requests.get(ui.url + "/", timeout=10).text
    assert f"/sessions/{sid}" not in listing and f"/sessions/{kept}" in listing
    gone = requests.get(f"{ui.url}/sessions/{sid}", timeout=10)
    assert gone.status_code == 410 and "This session was deleted" in gone.text
    # the open page's next poll says so (and stops polling: no hx-trigger)
    live = requests.get(f"{ui.url}/sessions/{sid}/live", params={"version": version},
                        timeout=10)
    assert live.status_code == 200 and "This session was deleted" in live.text
    assert 'id="session-live"' in live.text and "hx-trigger" not in live.text
    # an id never stored is still "no such session"
    never = requests.get(f"{ui.url}/sessions/never-stored", timeout=10)
    assert never.status_code == 404 and "No such session" in never.text
    assert requests.get(f"{ui.url}/sessions/never-stored/live", timeout=10).status_code == 204


def test_lucidic_ui_deletes_a_session_from_its_page_only_from_its_own_site(ui, agent) -> None:
    sid = agent("trip")   # still running
    page = requests.get(f"{ui.url}/sessions/{sid}", timeout=10).text
    assert f'action="/sessions/{sid}/delete"' in page and "Delete for good" in page
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        refused = requests.post(f"{ui.url}/sessions/{sid}/delete", data={"force": "1"},
                                headers=headers, allow_redirects=False, timeout=10)
        assert refused.status_code == 403, headers
    assert requests.get(f"{ui.url}/sessions/{sid}", timeout=10).status_code == 200
    same = {"Origin": ui.url}
    running = requests.post(f"{ui.url}/sessions/{sid}/delete", headers=same,
                            allow_redirects=False, timeout=10)
    assert running.status_code == 303
    assert running.headers["location"] == f"/sessions/{sid}?delete=running"
    asked = requests.get(ui.url + running.headers["location"], timeout=10).text
    assert "Not deleted: it is unfinished" in asked and "Delete it all the same" in asked
    forced = requests.post(f"{ui.url}/sessions/{sid}/delete", data={"force": "1"},
                           headers=same, allow_redirects=False, timeout=10)
    assert forced.status_code == 303 and forced.headers["location"] == f"/sessions/{sid}"
    gone = requests.get(ui.url + forced.headers["location"], timeout=10)
    assert gone.status_code == 410 and "This session was deleted" in gone.text
