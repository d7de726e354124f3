"""Uploads by signed, expiring URL: screenshots, and event payloads too large
to send inline.

A client asks for an upload URL (lucidicai's ``getpresigneduploadurl``, or the
``blob_url`` of a large ``/api/events`` payload) and PUTs the bytes there with
no credentials, as it would to S3. The server keeps everything in its
database (so any replica serves any upload): a pending row per URL, signed
with a key kept in ``lucidic_meta``, valid once and until it expires.

A stored screenshot is referenced from its step or event by the path that
serves it, ``/api/v1/screenshots/<object key>``: a step's ``screenshot``
holds that path, an event's ``screenshots`` the paths of its screenshots in
order (``nth_screenshot``). GET on the path with the project's key returns
the image.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import zlib
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from ..store import SCREENSHOT_PATH, Store
from ..ui import auth
from .app import Db, identity, project_key, read_or_404
from .models import valid_id
from .problems import ApiError, JSONOut

#: Defaults; ``lucidic server --max-upload-mb / --upload-ttl`` change them.
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_UPLOAD_TTL = 15 * 60.0
#: Largest event payload once decompressed (a gzip bomb stops here).
MAX_PAYLOAD_BYTES = 32 * 1024 * 1024

_SIGNING_KEY = "upload_signing_key"

router = APIRouter(tags=["uploads"])


def signing_key(store: Store) -> bytes:
    """The database's upload signing key, made on first use (every replica
    reads the same one)."""
    ph = store.placeholder

    def read(cur: Any) -> str | None:
        cur.execute(f"SELECT value FROM lucidic_meta WHERE key = {ph}", (_SIGNING_KEY,))
        row = cur.fetchone()
        return str(row[0]) if row else None

    made = store.transaction(read, write=False)
    if made is not None:
        return bytes.fromhex(made)
    if store.read_only:
        # Nothing can be uploaded into a store that cannot be written (each
        # upload is registered in it): this process's own key serves.
        return secrets.token_bytes(32)

    def run(cur: Any) -> str:
        cur.execute(f"INSERT INTO lucidic_meta (key, value) VALUES ({ph}, {ph}) "
                    "ON CONFLICT (key) DO NOTHING", (_SIGNING_KEY, secrets.token_hex(32)))
        cur.execute(f"SELECT value FROM lucidic_meta WHERE key = {ph}", (_SIGNING_KEY,))
        return str(cur.fetchone()[0])

    return bytes.fromhex(store.transaction(run))


def _signature(key: bytes, object_key: str, expires: int) -> str:
    message = f"{object_key}\n{expires}".encode("utf-8", "surrogatepass")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def presign(store: Store, request: Request, project: str, *, purpose: str,
            session_id: str, step_id: str | None = None, event_id: str | None = None,
            nth: int | None = None) -> dict[str, str]:
    """Register a pending upload and return its URL (lucidicai's
    ``presigned_url``, ``bucket_name``, ``object_key``)."""
    config = request.app.state.uploads
    object_key = secrets.token_urlsafe(24)
    now = time.time()
    expires = int(now + config.ttl) + 1
    ph = store.placeholder

    def run(cur: Any) -> None:
        # Pending uploads nobody used are forgotten a day after they expired.
        cur.execute(f"DELETE FROM uploads WHERE uploaded_at IS NULL AND expires_at < {ph}",
                    (now - 86400,))
        cur.execute("INSERT INTO uploads (id, project, purpose, session_id, step_id, event_id, "
                    f"nth, created_at, expires_at) VALUES ({', '.join([ph] * 9)})",
                    (object_key, project, purpose, session_id, step_id, event_id, nth, now,
                     float(expires)))

    store.transaction(run)
    signature = _signature(config.key, object_key, expires)
    base = str(request.base_url).rstrip("/")
    return {"presigned_url": f"{base}/api/uploads/{object_key}?expires={expires}"
                             f"&signature={signature}",
            "bucket_name": "lucidic", "object_key": object_key}


class UploadConfig:
    """What create_app decides about uploads, kept on app.state."""

    def __init__(self, key: bytes, *, max_bytes: int, ttl: float) -> None:
        self.key = key
        self.max_bytes = max_bytes
        self.ttl = ttl


_IMAGE_TYPES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"),
                (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"))


def _image_type(data: bytes) -> str | None:
    for magic, content_type in _IMAGE_TYPES:
        if data.startswith(magic):
            return content_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _decompressed(data: bytes, encoding: str | None) -> bytes:
    """The body without its Content-Encoding, never more than MAX_PAYLOAD_BYTES."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return data
    if encoding not in ("gzip", "deflate"):
        raise ApiError(415, f"Content-Encoding {encoding!r} is not supported; send gzip, "
                            "deflate or none")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(data, MAX_PAYLOAD_BYTES + 1)
    except zlib.error as exc:
        raise ApiError(400, f"the body is not valid {encoding} data ({exc})") from exc
    if len(out) > MAX_PAYLOAD_BYTES:
        raise ApiError(413, f"the body decompresses to more than {MAX_PAYLOAD_BYTES} bytes")
    return out


def decompress(data: bytes, encoding: str | None) -> bytes:
    """Shared with the OTLP route: gzip and deflate bodies, bounded."""
    if encoding and encoding.strip().lower() == "gzip" and not data.startswith(b"\x1f\x8b"):
        raise ApiError(400, "the body is not gzip data although Content-Encoding says gzip")
    return _decompressed(data, encoding)


#: Applies an uploaded event payload to its event: set by the lucidicai module
#: (which owns the mapping of payloads to event fields), called in the upload's
#: transaction as fn(store, cursor, upload row, payload).
payload_handlers: dict[str, Callable[[Store, Any, dict[str, Any], Any], None]] = {}


async def _raw_body(request: Request) -> bytes:
    return await request.body()


@router.put("/api/uploads/{object_key}", summary="Upload to a signed URL (no credentials: "
            "the URL is the permission; valid once, until it expires)",
            responses={403: {"description": "the signature is wrong or the URL expired"},
                       409: {"description": "the URL was used already"},
                       413: {"description": "the upload is too large"},
                       415: {"description": "not an image (screenshots)"}},
            openapi_extra={"requestBody": {"required": True, "content": {
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}})
def upload(object_key: str, request: Request, db: Db,
           data: Annotated[bytes, Depends(_raw_body)],
           expires: Annotated[int, Query(ge=0, le=2**53)],
           signature: Annotated[str, Query(max_length=128)]) -> JSONOut:
    config: UploadConfig = request.app.state.uploads
    given = signature.lower()
    if not (valid_id(object_key) and len(given) == 64 and given.isascii()
            and hmac.compare_digest(_signature(config.key, object_key, expires), given)):
        raise ApiError(403, "the upload URL's signature is not valid; ask for a new URL")
    if expires < time.time():
        raise ApiError(403, "the upload URL has expired; ask for a new one")
    if len(data) > config.max_bytes:
        raise ApiError(413, f"the upload is {len(data)} bytes, more than this server's limit "
                            f"of {config.max_bytes} bytes")
    if not data:
        raise ApiError(400, "the upload is empty")
    return JSONOut(_accept(db, object_key, data, request.headers.get("content-encoding")))


def _accept(store: Store, object_key: str, data: bytes,
            encoding: str | None) -> dict[str, Any]:
    ph = store.placeholder
    lock = " FOR UPDATE" if store.dialect == "postgresql" else ""
    now = time.time()

    def run(cur: Any) -> dict[str, Any]:
        cur.execute(f"SELECT id, project, purpose, session_id, step_id, event_id, nth, "
                    f"expires_at, uploaded_at FROM uploads WHERE id = {ph}{lock}", (object_key,))
        found = cur.fetchone()
        if found is None:
            raise ApiError(404, "no upload is expected at this URL; ask for a new one")
        row = dict(zip(("id", "project", "purpose", "session_id", "step_id", "event_id", "nth",
                        "expires_at", "uploaded_at"), found, strict=True))
        if row["uploaded_at"] is not None:
            raise ApiError(409, "this upload URL was used already; each URL takes one upload")
        if row["expires_at"] < now:
            raise ApiError(403, "the upload URL has expired; ask for a new one")
        body = _decompressed(data, encoding)
        if row["purpose"] == "screenshot":
            content_type = _image_type(body[:16])
            if content_type is None:
                raise ApiError(415, "a screenshot must be a JPEG, PNG, GIF or WebP image")
        else:
            content_type = "application/json"
            try:
                payload = json.loads(body)
            except ValueError as exc:
                raise ApiError(400, f"the payload is not valid JSON ({exc})") from exc
            except RecursionError as exc:  # thousands of levels: the reader gives up
                raise ApiError(422, "the payload is nested too deeply to read (a stored "
                                    "value may be nested at most 64 levels)") from exc
            payload_handlers[row["purpose"]](store, cur, row, payload)
        cur.execute(f"UPDATE uploads SET data = {ph}, size = {ph}, content_type = {ph}, "
                    f"uploaded_at = {ph} WHERE id = {ph}",
                    (body, len(body), content_type, now, object_key))
        if row["purpose"] == "screenshot":
            _attach_screenshot(store, cur, row)
        return {"object_key": object_key, "size": len(body)}

    result: dict[str, Any] = store.transaction(run)
    return result


def _attach_screenshot(store: Store, cur: Any, row: dict[str, Any]) -> None:
    """Reference the uploaded screenshot from its step or event; an earlier
    upload for the same place (a screenshot replaced) is deleted."""
    ph = store.placeholder
    if row["event_id"] is None:
        cur.execute(f"DELETE FROM uploads WHERE step_id = {ph} AND event_id IS NULL "
                    f"AND purpose = 'screenshot' AND id <> {ph} AND uploaded_at IS NOT NULL",
                    (row["step_id"], row["id"]))
        cur.execute(f"UPDATE steps SET screenshot = {ph} WHERE id = {ph}",
                    (SCREENSHOT_PATH + row["id"], row["step_id"]))
        store.note_changed(cur, [row["session_id"]] if row["session_id"] else [])
        return
    cur.execute(f"DELETE FROM uploads WHERE event_id = {ph} AND nth = {ph} "
                f"AND purpose = 'screenshot' AND id <> {ph} AND uploaded_at IS NOT NULL",
                (row["event_id"], row["nth"], row["id"]))
    cur.execute(f"SELECT id FROM uploads WHERE event_id = {ph} AND purpose = 'screenshot' "
                "AND uploaded_at IS NOT NULL ORDER BY nth, uploaded_at", (row["event_id"],))
    paths = [SCREENSHOT_PATH + found[0] for found in cur.fetchall()]
    cur.execute(f"UPDATE events SET screenshots = {ph} WHERE id = {ph}",
                (json.dumps(paths), row["event_id"]))
    store.note_changed(cur, [row["session_id"]] if row["session_id"] else [])


def read_screenshot(store: Store, object_key: str, project: str) -> tuple[str, bytes] | None:
    """A stored screenshot's content type and bytes, if it is this project's
    (what ``/api/v1/screenshots/<key>`` serves; the web UI may call it too)."""
    ph = store.placeholder

    def run(cur: Any) -> tuple[str, bytes] | None:
        cur.execute(f"SELECT content_type, data FROM uploads WHERE id = {ph} AND project = {ph} "
                    "AND purpose = 'screenshot' AND uploaded_at IS NOT NULL",
                    (object_key, project))
        found = cur.fetchone()
        return None if found is None else (str(found[0]), bytes(found[1]))

    return store.transaction(run, write=False)


@router.get(SCREENSHOT_PATH + "{object_key}", tags=["read"],
            response_class=Response, summary="A stored screenshot (the path a step's "
            "`screenshot` or an event's `screenshots` holds); the web UI's sign-in "
            "cookie serves as the key for its pages' images",
            responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}})
def get_screenshot(object_key: str, request: Request, db: Db) -> Response:
    credentials = project_key(request)
    if credentials is not None or auth.COOKIE not in request.cookies:
        project = identity(credentials, db).project
    else:
        found_project = auth.signed_in_project(db, request.cookies.get(auth.COOKIE))
        if found_project is None:
            raise ApiError(401, "not signed in: sign in to the web UI again, or send "
                                "'Authorization: Bearer <key>'")
        project = found_project
    content_type, data = read_or_404(partial(read_screenshot, db), "screenshot", object_key,
                                     project)
    return Response(data, media_type=content_type,
                    headers={"Cache-Control": "private, max-age=86400"})
