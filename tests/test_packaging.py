"""What installs this project: the distributions' names, the packages they
really hold, every `pip install` line in the docs and in our messages, the
extras the Makefile asks for, and an install that prints no warning of ours.

The name `lucidic` on the package index is an unrelated project; ours are
`lucidic-toolkit` and `lucidic-toolkit-PROVIDER`, imported as `lucidic` and
`lucidic_PROVIDER`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from helpers import tomllib
from lucidic import plugins

ROOT = Path(__file__).resolve().parent.parent
PROJECTS = [ROOT, *sorted(p.parent for p in (ROOT / "providers").glob("*/pyproject.toml"))]
CORE = "lucidic-toolkit"


def _pyproject(project: Path) -> dict:
    return tomllib.loads((project / "pyproject.toml").read_text("utf-8"))


def _names() -> dict[str, Path]:
    return {_pyproject(p)["project"]["name"]: p for p in PROJECTS}


def _extras(project: Path) -> set[str]:
    return set(_pyproject(project)["project"].get("optional-dependencies", {}))


def test_the_core_and_every_provider_have_a_lucidic_toolkit_name():
    names = _names()
    assert names[CORE] == ROOT
    providers = sorted(n for n in names if n != CORE)
    assert providers == sorted(plugins.FIRST_PARTY.values())
    for name in providers:
        assert name.startswith(CORE + "-")
        requirements = [Requirement(r) for r in _pyproject(names[name])["project"]["dependencies"]]
        assert CORE in {r.name for r in requirements}, f"{name} does not depend on {CORE}"


def test_the_installed_distributions_are_these_projects():
    """The environment the suite runs in was installed from these files:
    each distribution is there under its name, with the entry points and the
    version the sources declare."""
    import lucidic

    assert metadata.version(CORE) == lucidic.__version__
    scripts = {ep.name: ep for ep in metadata.distribution(CORE).entry_points
               if ep.group == "console_scripts"}
    assert scripts["lucidic"].value == "lucidic.cli:main"
    by_dist = {ep.dist.name: ep for ep in metadata.entry_points(group=plugins.ENTRY_POINT_GROUP)
               if ep.dist is not None}
    for name, provider in plugins.FIRST_PARTY.items():
        project = _pyproject(_names()[provider])
        declared = project["project"]["entry-points"][plugins.ENTRY_POINT_GROUP]
        assert declared == {name: by_dist[provider].value}
        package = by_dist[provider].value.split(":")[0]
        assert project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == [package]
        assert metadata.version(provider) == project["project"]["version"]


def test_each_plugin_names_a_library_its_distribution_requires():
    """"pip install LIBRARY" in a missing-library error installs what the
    plugin really instruments."""
    for name, provider in plugins.FIRST_PARTY.items():
        library = canonicalize_name(plugins.get_adapter(name).library)
        required = {canonicalize_name(Requirement(r).name)
                    for r in _pyproject(_names()[provider])["project"]["dependencies"]}
        assert library in required, (name, library, required)


def test_the_makefile_asks_only_for_extras_that_exist():
    makefile = (ROOT / "Makefile").read_text("utf-8")
    (core_extras,) = re.findall(r"-e '\.\[([\w,-]+)\]'", makefile)
    assert set(core_extras.split(",")) <= _extras(ROOT)
    (provider_extras,) = re.findall(r"-e '\$\(dir \$\(p\)\)\[([\w,-]+)\]'", makefile)
    for project in PROJECTS[1:]:
        assert set(provider_extras.split(",")) <= _extras(project), project.name


_INSTALL = re.compile(r"pip install((?:[ \t]+(?:'[^'\n]*'|[^\s'\"`#)]+))+)")
_TOKEN = re.compile(r"'[^'\n]*'|[^\s'\"`#)]+")


def _install_lines() -> list[tuple[str, str]]:
    sources = [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("examples/**/*.md"),
               *ROOT.glob("lucidic/**/*.py"), *ROOT.glob("providers/*/*/*.py"),
               ROOT / "Makefile"]
    found = []
    for path in sources:
        for match in _INSTALL.finditer(path.read_text("utf-8")):
            found.append((f"{path.relative_to(ROOT)}: pip install{match.group(1)}",
                          match.group(1)))
    return found


def _check_install_arguments(arguments: str, names: dict[str, Path]) -> None:
    libraries = {canonicalize_name(plugins.get_adapter(n).library) for n in plugins.FIRST_PARTY}
    libraries.add("pip")  # the Makefile upgrades pip itself
    tokens = [t.strip("'") for t in _TOKEN.findall(arguments)]
    for token in tokens:
        last = len(token) > 1 and token.endswith(".")  # a sentence ends with the command
        token = token.rstrip(".,;:") if len(token) > 1 else token
        if token.startswith("-") or "{" in token or "$" in token:
            continue  # an option, or a placeholder filled in at run time (tested apart)
        if token.startswith((".", "/")) or "/" in token.split("[")[0]:
            path, _, extras = token.partition("[")
            project = (ROOT / path).resolve()
            assert (project / "pyproject.toml").is_file(), f"{token}: no project there"
            wanted = {e.strip() for e in extras.rstrip("]").split(",") if e.strip()}
            if project in PROJECTS:
                assert wanted <= _extras(project), f"{token}: no such extra"
            continue
        requirement = Requirement(token)
        if requirement.name in names:
            assert requirement.extras <= _extras(names[requirement.name]), token
        else:
            assert canonicalize_name(requirement.name) in libraries, (
                f"{token}: neither one of our distributions ({', '.join(names)}) nor a "
                "library a first-party plugin instruments")
        if last:
            break


def test_every_install_line_names_what_really_installs():
    lines = _install_lines()
    assert len(lines) >= 5  # the scan finds the README's, the docs' and the messages' lines
    names = _names()
    for where, arguments in lines:
        try:
            _check_install_arguments(arguments, names)
        except AssertionError as exc:
            raise AssertionError(f"{where}\n{exc}") from exc


def test_the_install_lines_made_at_run_time_name_real_distributions():
    names = _names()
    for name in plugins.FIRST_PARTY:
        message = plugins.unknown_provider_message(name, [])
        (arguments,) = [m.group(1) for m in _INSTALL.finditer(message)]
        _check_install_arguments(arguments, names)
    _check_install_arguments(
        _INSTALL.search(plugins.unknown_provider_message("langgraph", [])).group(1), names)


# -- installing ---------------------------------------------------------------------

#: pip's own notice about index folders named by this machine's pip
#: configuration that do not exist: the machine's, not this project's.
_MACHINE_NOTICE = re.compile(r"^WARNING: Location '[^']*' is ignored: it is neither a file "
                             r"nor a directory\.$")


def _warnings(output: str) -> list[str]:
    return [line for line in output.splitlines()
            if re.search(r"warn|deprecat|!!", line, re.IGNORECASE)
            and not _MACHINE_NOTICE.match(line.strip())]


@pytest.mark.timeout(600)
def test_installing_prints_no_warning_and_the_wheels_hold_the_right_packages(tmp_path):
    """`pip install -e` of every project (what `make install` does) and a
    wheel build of each (what the index would serve) print no warning; each
    wheel is named as its project and holds its import package."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"

    def pip(*args: str) -> str:
        result = subprocess.run([str(python), "-m", "pip", *args], capture_output=True,
                                text=True, timeout=400)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr

    # The build backend every project asks for (and what it asks for to build
    # an editable wheel), installed once so that the builds below need no
    # isolated environment each.
    (backend,) = {r for p in PROJECTS for r in _pyproject(p)["build-system"]["requires"]}
    pip("install", backend, "editables")
    editable = [arg for project in PROJECTS for arg in ("-e", str(project))]
    assert _warnings(pip("install", "--no-deps", "--no-build-isolation", *editable)) == []

    wheels = tmp_path / "wheels"
    built = pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                *map(str, PROJECTS))
    assert _warnings(built) == []
    for name, project in _names().items():
        (wheel,) = wheels.glob(f"{name.replace('-', '_')}-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            files = archive.namelist()
            info = next(f for f in files if f.endswith(".dist-info/METADATA"))
            fields = archive.read(info).decode()
        assert f"\nName: {name}\n" in fields and "\nLicense-Expression: Apache-2.0\n" in fields
        packages = _pyproject(project)["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
        assert {f.split("/")[0] for f in files if not f.split("/")[0].endswith(".dist-info")} \
            == set(packages)
        assert f"{packages[0]}/__init__.py" in files and f"{packages[0]}/py.typed" in files
    core = next(wheels.glob("lucidic_toolkit-*.whl"))
    assert "lucidic/data/prices.json" in zipfile.ZipFile(core).namelist()
