"""A third party's provider plugin, installed with pip, is found through the
entry point and records through lai.init(providers=[...]) — in a child process
whose import path holds the installed plugin, leaving this environment alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import ReadableStore
from lucidic.plugins import describe

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "third_party_plugin"

#: One xdist worker runs this module: a module fixture is made once per
#: worker, and the pip install of the example costs more than the tests.
pytestmark = pytest.mark.xdist_group("third-party-plugin")


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip install the example into a scratch site directory (from a copy, so
    the build leaves nothing in the checkout)."""
    scratch = tmp_path_factory.mktemp("third-party")
    source = scratch / "source"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = scratch / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
         str(source)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"pip install of the example plugin failed:\n{result.stdout}\n{result.stderr}")
    assert (site / "lucidic_echo").is_dir()
    return site


def child(code: str, *, site: Path, home: Path, extra_env: dict[str, str] | None = None,
          args: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUCIDIC_")}
    env.update({"LUCIDIC_HOME": str(home), "PYTHONPATH": str(site), **(extra_env or {})})
    command = args if args is not None else [sys.executable, "-c", textwrap.dedent(code)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env,
                            cwd=str(ROOT))
    assert result.returncode == 0, f"child failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_installed_plugin_records_its_calls_through_init(installed_plugin, tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"echo": {"echo-1": {"input": 1.0, "output": 2.0}}}))
    home = tmp_path / "home"
    out = child("""
        import lucidic as lai
        from lucidic_echo import EchoClient

        before = EchoClient.__dict__["complete"]
        session_id = lai.init(session_name="plugin", providers=["echo"])
        assert EchoClient.__dict__["complete"] is not before
        reply = EchoClient().complete("hello plugin world")
        assert reply.text == "world plugin hello"
        try:
            EchoClient().complete("")
        except ValueError:
            pass
        lai.end_session()
        EchoClient().complete("not recorded: no session")
        print(session_id)
    """, site=installed_plugin, home=home, extra_env={"LUCIDIC_PRICES": str(prices)})
    session_id = out.stdout.strip()
    store = ReadableStore(home / "lucidic.db")
    try:
        tree = store.session_tree(session_id)
    finally:
        store.close()
    ok, failed = sorted(tree["events"], key=lambda e: e["started_at"])
    assert len(tree["events"]) == 2
    assert ok["type"] == "llm" and ok["provider"] == "echo"
    assert (ok["request_model"], ok["model"]) == ("echo-1", "echo-1-2025")
    assert ok["input"] == [{"role": "user", "content": "hello plugin world"}]
    assert ok["output"] == {"role": "assistant", "content": "world plugin hello"}
    assert (ok["input_tokens"], ok["output_tokens"]) == (3, 3)
    # priced by the user's LUCIDIC_PRICES file (prefix echo-1): 3 × $1 + 3 × $2 per million
    assert ok["cost"] == pytest.approx((3 * 1.0 + 3 * 2.0) / 1_000_000)
    assert failed["error"] == "ValueError: prompt must not be empty"


def test_lucidic_providers_lists_the_installed_plugin(installed_plugin, tmp_path):
    lucidic_cli = Path(sys.executable).with_name("lucidic")
    out = child("", site=installed_plugin, home=tmp_path,
                args=[str(lucidic_cli), "providers"]).stdout
    (line,) = [line for line in out.splitlines() if line.startswith("echo ")]
    assert "lucidic-example-echo 0.1.0" in line and "(supports >=0.1)" in line
    assert any(line.startswith("openai ") for line in out.splitlines())


def test_the_plugin_is_not_installed_in_this_environment():
    assert "echo" not in {info.name for info in describe()}


def test_the_plugin_written_in_the_providers_guide_records_a_call(tmp_path):
    """docs/providers.md's plugin (its pyproject and its module, as written),
    over a stand-in `mylib`, records one call through lai.init(providers=...)."""
    import re

    from helpers import tomllib

    guide = (ROOT / "docs" / "providers.md").read_text("utf-8")
    section = guide.split("## Writing a provider plugin", 1)[1]
    toml_text = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    module = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    project = tomllib.loads(toml_text)["project"]
    assert project["dependencies"][0].startswith("lucidic-toolkit")  # the core's distribution
    ((name, target),) = project["entry-points"]["lucidic.providers"].items()
    site = tmp_path / "site"
    for path, text in {
        "mylib/__init__.py": "",
        "mylib/client.py": textwrap.dedent("""
            from types import SimpleNamespace

            class Client:
                def complete(self, *, model, messages):
                    return SimpleNamespace(model=model + "-0613", text="hi",
                                           usage=SimpleNamespace(input=5, output=1))
        """),
        "mylib-2.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: mylib\nVersion: 2.0\n",
        "lucidic_mylib/__init__.py": module,
        "lucidic_mylib-0.1.dist-info/METADATA":
            "Metadata-Version: 2.1\nName: lucidic-mylib\nVersion: 0.1\n",
        "lucidic_mylib-0.1.dist-info/entry_points.txt":
            f"[lucidic.providers]\n{name} = {target}\n",
    }.items():
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).write_text(text, "utf-8")
    code = textwrap.dedent(f"""
        import json
        import lucidic as lai
        from lucidic._internal import internal_errors
        from lucidic.testing import capture
        from mylib.client import Client

        with capture() as recorded:
            lai.init("guide plugin", providers=[{name!r}])
            Client().complete(model="my-model", messages=[{{"role": "user", "content": "yo"}}])
            lai.end_session()
        (call,) = recorded.events("llm")
        print(json.dumps({{k: call[k] for k in ("provider", "request_model", "model", "output",
                                                "input_tokens", "output_tokens")}}))
        print(sum(internal_errors.values()))
    """)
    path = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": path,
                                             "LUCIDIC_HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr
    recorded, errors = result.stdout.splitlines()
    assert json.loads(recorded) == {"provider": "mylib", "request_model": "my-model",
                                    "model": "my-model-0613", "output": "hi",
                                    "input_tokens": 5, "output_tokens": 1}
    assert errors == "0"
