PYTHON ?= python3
VENV ?= .venv

.PHONY: install test run lint bench

# Install streamrec and its Python dependencies into $(VENV).
install:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q ".[test]"

# Install everything the tests need, then run them.
test: install
	bash scripts/install-system-packages
	$(VENV)/bin/python -m twisted.trial --temp-directory=/tmp/streamrec-trial tests

# Run the service in the foreground on the embedded default (SQLite, ./data, port 8080).
run: install
	$(VENV)/bin/twistd -n --pidfile= streamrec

lint:
	$(VENV)/bin/ruff check streamrec tests bench
	$(VENV)/bin/mypy streamrec

bench: install
	$(VENV)/bin/python bench/clip_bench.py
