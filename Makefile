# The two commands of the README: `make demo` and `make test`. Both build the
# local virtual environment from the project's own files first. Another
# Python, beside the first: `make test PYTHON=python3.13 VENV=.venv-3.13`.
PYTHON := python3
VENV := .venv
PY := $(VENV)/bin/python
PROVIDERS := $(sort $(wildcard providers/*/pyproject.toml))

# The distributions were renamed (lucidic -> lucidic-toolkit, lucidic-openai ->
# lucidic-toolkit-openai, ...): the uninstall drops the old names from a venv
# made before the rename, or both would register the same plugins.
RETIRED := lucidic $(foreach p,$(PROVIDERS),$(notdir $(patsubst %/,%,$(dir $(p)))))

$(VENV)/.installed: pyproject.toml $(PROVIDERS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip uninstall --quiet --yes $(RETIRED) 2>/dev/null || true
	$(PY) -m pip install --quiet -e '.[dev,server]' $(foreach p,$(PROVIDERS),-e '$(dir $(p))[test]')
	touch $@

# tests/server/test_lucidicai3.py runs the hosted SDK's 3.x client, which is the
# same `lucidicai` package as the 1.3.5 the venv holds: it goes to a directory
# of its own, put first on the path of the child processes that run it. No
# dependencies: what it imports, lucidicai 1.3.5 and the dev extras installed.
LUCIDICAI3 := lucidicai==3.7.1
$(VENV)/lucidicai3/.installed: $(VENV)/.installed Makefile
	rm -rf $(VENV)/lucidicai3
	$(PY) -m pip install --quiet --no-deps --target $(VENV)/lucidicai3 '$(LUCIDICAI3)'
	$(PY) -c "import sys; sys.path.insert(0, '$(VENV)/lucidicai3'); import lucidicai; \
		assert lucidicai.__version__ == '$(LUCIDICAI3)'.split('==')[1], lucidicai.__file__"
	touch $@

# The browser tests drive Debian's chromium (Playwright's own browser download
# cannot work offline). Installed here where we may (root with apt-get);
# elsewhere the tests say what to run.
CHROMIUM := /usr/bin/chromium
CJK_FONT := /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc

.PHONY: install demo test bench lint browser
install: $(VENV)/.installed $(VENV)/lucidicai3/.installed

browser:
	@if [ -x $(CHROMIUM) ] && [ -e $(CJK_FONT) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium and fonts-noto-cjk with apt-get (for the browser tests)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends chromium fonts-noto-cjk >/dev/null) \
		|| echo "could not install chromium: the browser tests will say what to run"; \
	else echo "no $(CHROMIUM): the browser tests need 'sudo apt-get install -y chromium fonts-noto-cjk'"; fi

demo: $(VENV)/.installed
	$(PY) examples/run_all.py

# Four workers: most tests wait on child processes, servers and the database
# (two workers kept a two-core machine under half busy), so four shorten the
# suite even on two cores (each test has its own store, schema and port;
# loadgroup keeps the tests that need port 8000 on one worker).
test: install browser
	$(PY) -m pytest -n 4 --dist loadgroup

bench: $(VENV)/.installed
	$(PY) bench/run_all.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check lucidic tests examples bench providers
	$(VENV)/bin/mypy
