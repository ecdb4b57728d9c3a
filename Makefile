PYTHON ?= python3
VENV ?= .venv
PLUGINS = "./plugins/streamrec-s3[test]" ./plugins/streamrec-timelapse
PLUGIN_TESTS = plugins/streamrec-s3/tests/test_streamrec_s3.py \
               plugins/streamrec-timelapse/tests/test_timelapse.py

.PHONY: venv install install-test test run lint bench

venv:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip

# Install streamrec and its Python dependencies into $(VENV).
install: venv
	$(VENV)/bin/pip install -q .

# streamrec with the test tools and the optional plugins (installed together,
# so their dependency on streamrec is this checkout).
install-test: venv
	$(VENV)/bin/pip install -q ".[test]" $(PLUGINS)
	bash scripts/install-system-packages

# Install everything the tests need, then run them (with a throwaway
# PostgreSQL server for the shared-engine tests).
test: install-test
	bash scripts/with-postgres \
	  $(VENV)/bin/python -m twisted.trial --temp-directory=/tmp/streamrec-trial tests $(PLUGIN_TESTS)

# Run the service in the foreground on the embedded default (SQLite, ./data, port 8080).
run: install
	$(VENV)/bin/twistd -n --pidfile= streamrec

lint:
	$(VENV)/bin/ruff check streamrec tests bench plugins
	$(VENV)/bin/mypy streamrec

bench: install-test
	$(VENV)/bin/python bench/clip_bench.py
	$(VENV)/bin/python bench/transcode_bench.py
	$(VENV)/bin/python bench/service_bench.py
