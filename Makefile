# The two commands of the README: `make demo` and `make test`. Both build the
# local virtual environment from the project's own files first.
VENV := .venv
PY := $(VENV)/bin/python
PROVIDERS := $(sort $(wildcard providers/*/pyproject.toml))

# The distributions were renamed (lucidic -> lucidic-toolkit, lucidic-openai ->
# lucidic-toolkit-openai, ...): the uninstall drops the old names from a venv
# made before the rename, or both would register the same plugins.
RETIRED := lucidic $(foreach p,$(PROVIDERS),$(notdir $(patsubst %/,%,$(dir $(p)))))

$(VENV)/.installed: pyproject.toml $(PROVIDERS)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip uninstall --quiet --yes $(RETIRED) 2>/dev/null || true
	$(PY) -m pip install --quiet -e '.[dev,server]' $(foreach p,$(PROVIDERS),-e '$(dir $(p))[test]')
	touch $@

.PHONY: install demo test bench lint
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) examples/run_all.py

test: $(VENV)/.installed
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) bench/run_all.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check lucidic tests examples bench providers
	$(VENV)/bin/mypy
