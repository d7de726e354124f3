"""The web UI: server-rendered pages over lucidic.reading, served by
``lucidic ui`` (lucidic.ui.app: the embedded store, no sign-in) and by
``lucidic server`` (lucidic.ui.pages.install: behind a sign-in with a
project's API key).

Needs the ``server`` extra (FastAPI, uvicorn, Jinja2); ``import lucidic``
never loads it.
"""
