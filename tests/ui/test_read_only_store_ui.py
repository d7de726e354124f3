"""`lucidic ui` over an embedded store on a read-only filesystem (a real
tmpfs remounted read-only): it shows what the store holds."""

from __future__ import annotations

from pathlib import Path

import requests
from faults import ReadOnlyDisk, recorded_session


def test_lucidic_ui_shows_a_store_on_a_read_only_filesystem(tmp_path: Path) -> None:
    # `lucidic ui` could not start: opening the store failed. Its refresher,
    # which rebuilds derived data (writes), must leave the pages alone too.
    from conftest import UiProcess

    with ReadOnlyDisk(tmp_path / "disk") as disk:
        home = disk.path / "home"
        sid = recorded_session(home)
        disk.read_only()
        ui = UiProcess(home, tmp_path / "ui.log")
        try:
            for _ in range(3):  # across the refresher's rounds
                listing = requests.get(f"{ui.url}/", timeout=30)
                page = requests.get(f"{ui.url}/sessions/{sid}", timeout=30)
                assert listing.status_code == 200 and "written before" in listing.text
                assert page.status_code == 200 and "event before" in page.text
        finally:
            ui.stop()
    log = ui.log.read_text(errors="replace")
    assert "Traceback" not in log and "refreshing derived data failed" not in log, log
