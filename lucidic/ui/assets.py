"""The UI's static files, served by the package itself under /static.

Our own stylesheet and script, and third-party files vendored unchanged
(``static/vendor/VENDORED.json`` names each one's package, version, licence
and SHA-256). URLs carry a digest of the file, so browsers may cache them
for good and still see a new version the moment it ships.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

STATIC_DIR = Path(__file__).resolve().parent / "static"
PREFIX = "/static"
MANIFEST = STATIC_DIR / "vendor" / "VENDORED.json"

#: The vendored files the pages use, by short name.
HTMX = "vendor/htmx-2.0.11/htmx.min.js"
SWAGGER_JS = "vendor/swagger-ui-5.35.0/swagger-ui-bundle.js"
SWAGGER_CSS = "vendor/swagger-ui-5.35.0/swagger-ui.css"


@lru_cache(maxsize=64)
def _digest(relative: str) -> str:
    return hashlib.sha256((STATIC_DIR / relative).read_bytes()).hexdigest()[:12]


def url(relative: str) -> str:
    """The URL of a static file, versioned by its content."""
    return f"{PREFIX}/{relative}?v={_digest(relative)}"


def vendored() -> list[dict[str, Any]]:
    """The vendored files as the manifest records them."""
    files: list[dict[str, Any]] = json.loads(MANIFEST.read_text("utf-8"))["files"]
    return files


def check_vendored() -> list[str]:
    """Files whose content differs from the manifest (empty when all match)."""
    wrong = []
    for entry in vendored():
        path = STATIC_DIR / "vendor" / entry["file"]
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
            wrong.append(entry["file"])
    return wrong
