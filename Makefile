PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# This machine caps pip at these releases; elsewhere pip resolves torch from pyproject's range.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test test-slow lint format demo splits benchmark-speed benchmark-data clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

install: $(PY)
	$(PY) -m pip install $(TORCH_PIN)
	$(PY) -m pip install -e ".[dev]"

test: $(PY)
	$(PY) -m pytest -q

test-slow: $(PY)
	$(PY) -m pytest -q -m slow

lint: $(PY)
	$(PY) -m ruff check tcclip tests benchmarks
	$(PY) -m ruff format --check tcclip tests benchmarks

format: $(PY)
	$(PY) -m ruff format tcclip tests benchmarks
	$(PY) -m ruff check --fix tcclip tests benchmarks

clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
