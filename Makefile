# The two commands of the README: `make demo` and `make test`. Both build the
# local virtual environment from the project's own files first.
VENV := .venv
PY := $(VENV)/bin/python
PROVIDERS := $(sort $(wildcard providers/*/pyproject.toml))

$(VENV)/.installed: pyproject.toml $(PROVIDERS)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
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
