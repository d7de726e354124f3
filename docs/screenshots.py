"""Remake the README's screenshots of the web UI.

    .venv/bin/python docs/screenshots.py [--out docs/images]

Records a few sessions with real SDK processes into a fresh embedded store
(tests/ui/agents.py; the LLM calls are replayed from recorded provider
traffic), starts `lucidic ui` on it, and photographs the sessions list and
a session with its LLM call open, with Debian's chromium driven by
Playwright (apt-get install chromium fonts-noto-cjk).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AGENTS = ROOT / "tests" / "ui" / "agents.py"
SHARED = Path(os.environ.get("LUCIDIC_SHARED_CASSETTES", ROOT.parent / "shared" / "cassettes"))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def agent(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([sys.executable, str(AGENTS), *args], env=env, capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    lines = result.stdout.split()
    if not lines:
        sys.exit(f"agents.py {' '.join(args)} failed:\n{result.stderr}")
    return lines[0]


def record(home: Path) -> str:
    env = {**os.environ, "LUCIDIC_HOME": str(home)}
    for name, task in (("Refund request #4471", "Customer asks for a refund of order 4471"),
                       ("Summarise the weekly metrics", None),
                       ("你好世界 — greet a new user", "说你好, then explain the plan")):
        agent(env, "new", name, *([task] if task else []))
    agent(env, "failing")
    cassette = SHARED / "anthropic" / "messages_thinking.yaml"
    if not cassette.is_file():
        cassette = ROOT / "cassettes" / "openai" / "chat_refusal.yaml"
    trip = agent(env, "trip", str(cassette))
    agent(env, "handover", trip)
    agent(env, "trip", str(cassette))  # a second one, left running
    return trip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lucidic-shots-") as tmp:
        home = Path(tmp) / "home"
        trip = record(home)
        ui = subprocess.Popen([sys.executable, "-m", "lucidic", "ui", "--port", "0"],
                              env={**os.environ, "LUCIDIC_HOME": str(home)},
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert ui.stdout is not None
            url = ""
            deadline = time.monotonic() + 30
            while not url and time.monotonic() < deadline:
                found = re.search(r"http://\S+", ui.stdout.readline())
                url = found.group(0) if found else ""
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1440, "height": 860},
                                        device_scale_factor=1, color_scheme="light")
                page.goto(url)
                page.wait_for_selector("table.sessions tbody tr")
                page.screenshot(path=str(args.out / "sessions.png"))
                page.set_viewport_size({"width": 1440, "height": 1300})
                page.goto(f"{url}sessions/{trip}")
                page.locator(".node.type-llm").first.click()
                page.wait_for_selector("#detail .conversation")
                thinking = page.locator("#detail details.thinking summary")
                if thinking.count():
                    thinking.first.click()
                page.screenshot(path=str(args.out / "session.png"))
                page.goto(f"{url}dashboard")
                page.screenshot(path=str(args.out / "dashboard.png"), full_page=True)
                browser.close()
        finally:
            ui.terminate()
            ui.wait(10)
    print(f"wrote {args.out / 'sessions.png'}, {args.out / 'session.png'} and "
          f"{args.out / 'dashboard.png'}")


if __name__ == "__main__":
    main()
