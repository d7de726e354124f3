"""``lucidic ui``: the pages over the embedded store, on this machine only.

No accounts and no sign-in, so the app answers only requests addressed to
it by a loopback name or address (see lucidic.ui.security), refuses
cross-site posts, and binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from ..reading.derived import Refresher
from .db import StorePool
from .pages import install
from .render import compile_templates
from .security import HostAllowList, SecurityMiddleware

logger = logging.getLogger("lucidic.ui")

#: The default port of `lucidic ui` (the server's is 8765).
DEFAULT_UI_PORT = 8766


def create_ui_app(database_url: str, *, bind_host: str = "127.0.0.1",
                  allow_hosts: Iterable[str] = (), pool_size: int = 4,
                  store_name: tuple[str, str] | None = None) -> FastAPI:
    """The UI app over ``database_url`` with no sign-in, answering only the
    hosts ``bind_host`` and ``allow_hosts`` name (and loopback). Its header
    names the store: ``store_name`` (a short name, and a longer one for its
    tooltip), else this machine's embedded store."""
    pool = StorePool(database_url, size=pool_size)
    refresher = Refresher(pool.store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        refresher.start()
        yield
        refresher.stop()
        pool.close()

    app = FastAPI(title="Lucidic", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.pool = pool
    app.state.ui_signin = False
    app.state.ui_store_name = store_name
    install(app)
    app.add_middleware(SecurityMiddleware, hosts=HostAllowList(bind_host, allow_hosts))
    return app


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one). Bound before
    the app starts, so the URL announced is the one that answers and a port
    already taken is an error right away."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def page_url(host: str, port: int) -> str:
    """Where a person on this machine opens the UI."""
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run_ui(database_url: str, *, host: str = "127.0.0.1", port: int = DEFAULT_UI_PORT,
           allow_hosts: Iterable[str] = (), announce: Callable[[str], None] | None = None,
           log_level: str = "warning", store_name: tuple[str, str] | None = None) -> None:
    """Serve the UI until interrupted; ``announce`` is told its URL once it
    serves, its pages' templates compiled: the first page opened there is
    answered as fast as any (a cold start, its server's start-up and the
    first page's templates, took up to 6 s on a loaded machine, counted
    against the first request). Raises OSError when the address cannot be
    bound."""
    import uvicorn

    sock = listen(host, port)
    app = create_ui_app(database_url, bind_host=host, allow_hosts=allow_hosts,
                        store_name=store_name)
    compile_templates()
    url = page_url(host, sock.getsockname()[1])

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and announce is not None:
                announce(url)

    config = uvicorn.Config(app, log_level=log_level, access_log=False, server_header=False,
                            timeout_keep_alive=30)
    Server(config).run(sockets=[sock])
