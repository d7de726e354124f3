"""`import lucidic` loads the SDK and its few light dependencies only
(DESIGN section 6): never the server's, never a provider library's."""

from __future__ import annotations

import json

from helpers import run_python

HEAVY = ("fastapi", "starlette", "uvicorn", "psycopg", "pydantic", "requests", "wrapt",
         "openai", "anthropic", "langchain_core", "pydantic_ai", "agents", "asyncio",
         "lucidic.server", "lucidic._http", "rich", "lucidic._render", "lucidic.cli",
         "jinja2", "lucidic.ui", "lucidic.reading")


def test_recording_into_the_embedded_store_imports_nothing_heavy(lucidic_home):
    result = run_python(f"""
        import json, sys
        import lucidic as lai
        lai.init(session_name="light")
        lai.create_event(description="x")
        assert lai.flush()
        print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
    """, home=lucidic_home)
    assert json.loads(result.stdout) == []


def test_the_http_sink_loads_requests_but_not_the_server(lucidic_home):
    result = run_python("""
        import json, sys
        import lucidic._http
        print(json.dumps(sorted(m for m in sys.modules
                                if m.split(".")[0] in ("fastapi", "uvicorn", "psycopg")
                                or m.startswith("lucidic.server"))))
    """, home=lucidic_home)
    assert json.loads(result.stdout) == []
