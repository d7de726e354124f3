"""What keeps the pages safe to open: security headers on every response, and
for ``lucidic ui`` (which has no sign-in) a Host check against DNS
rebinding and a refusal of cross-site form posts.

- **Content-Security-Policy**: scripts and styles only from this origin, no
  inline script or ``eval`` (htmx runs with ``allowEval`` off), images from
  here or ``data:`` (recorded screenshots), no frames, no plugins.
- **Host**: a page elsewhere on the web can point a name it controls at
  127.0.0.1 and then read a local server as its own origin. Answering only
  requests whose ``Host`` is an address or loopback name of this server
  defeats that (as Jupyter does): an attacker's name never matches.
- **Cross-site posts**: a browser marks where a request comes from
  (``Sec-Fetch-Site``, ``Origin``); a state-changing request from another
  site is refused. No CORS header is ever sent, so other origins cannot read
  an answer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")

SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def _plain(host: str) -> str:
    """A Host header's name without port or IPv6 brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostAllowList:
    """Which ``Host`` values a local server answers: its loopback names and
    addresses, the address it listens on, names given with --allow-host, and
    when it listens on every interface, any IP address (a rebinding attack
    needs a name: an address typed by a person is never one)."""

    def __init__(self, bind_host: str, extra: Iterable[str] = ()) -> None:
        bind = _plain(bind_host)
        self.names = {*_LOOPBACK_NAMES, "127.0.0.1", "::1", bind,
                      *(_plain(h) for h in extra)}
        self.any_ip = bind in ("0.0.0.0", "::", "")

    def allows(self, host_header: str | None) -> bool:
        if not host_header:
            return False
        name = _plain(host_header)
        if name in self.names:
            return True
        if _is_ip(name):
            return self.any_ip or ipaddress.ip_address(name).is_loopback
        return False


def cross_site(headers: Headers, host: str | None) -> bool:
    """True when a browser says the request comes from another site."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site not in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None:
        return False  # not a browser's cross-site request (browsers send Origin on POST)
    if origin == "null":
        return True
    return urlsplit(origin).netloc.lower() != (host or "").lower()


class SecurityMiddleware:
    """Adds the security headers to every response; with ``hosts``, also
    refuses unknown Host headers; refuses cross-site unsafe requests to the
    paths under ``protected`` (the pages, not the API that SDKs call)."""

    def __init__(self, app: ASGIApp, *, hosts: HostAllowList | None = None,
                 api_prefixes: tuple[str, ...] = ("/api/", "/v1/")) -> None:
        self.app = app
        self.hosts = hosts
        self.api_prefixes = api_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host")
        if self.hosts is not None and not self.hosts.allows(host):
            await _refuse(send, 421 if host else 400,
                          "This server answers only requests addressed to it by its own "
                          "address (for example http://127.0.0.1:PORT/); start it with "
                          "--allow-host NAME to reach it by another name.")
            return
        path: str = scope.get("path", "")
        if scope["method"] not in _SAFE_METHODS and not path.startswith(self.api_prefixes) \
                and cross_site(headers, host):
            await _refuse(send, 403, "Cross-site requests are refused.")
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in out:
                        out[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _refuse(send: Send, status: int, text: str) -> None:
    body = text.encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            *((k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items())]})
    await send({"type": "http.response.body", "body": body})
