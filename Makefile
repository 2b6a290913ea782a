# The two commands: `make dev` (Dagster UI with the example playbooks) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
## the UI's port: `make dev PORT=3001` when 3000 is taken
PORT ?= 3000

.PHONY: install dev run test validate bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade uv
	$(VENV)/bin/uv pip install -q --python $(PY) -e '.[test]'
	touch $@

$(DAGSTER_HOME)/dagster.yaml:
	$(PY) -c "import sys; from noetl_dagster.storage import write_instance_config; write_instance_config(sys.argv[1])" $(DAGSTER_HOME)

## dagster dev on the embedded default (SQLite storage under .dagster_home). No -f: the code
## location is the one [tool.dagster] in pyproject.toml names (noetl_playbooks), the name
## `dagster job launch`, `dagster definitions validate` and deploy/README.md use.
dev: install $(DAGSTER_HOME)/dagster.yaml
	@$(PY) -c 'import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", $(PORT)))' 2>/dev/null \
	  || { echo "make dev: port $(PORT) on 127.0.0.1 is taken (another dagster dev?); use e.g. make dev PORT=3001" >&2; exit 1; }
	$(VENV)/bin/dagster dev -h 127.0.0.1 -p $(PORT)

## run the main example job once, in process, recorded in .dagster_home
run: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/noetl-dagster run playbooks/risk/score_application.yaml

validate: install
	$(VENV)/bin/noetl-dagster validate playbooks/
	$(VENV)/bin/dagster definitions validate

## the whole test suite
test: install
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/compile_scale.py
	$(PY) benchmarks/step_overhead.py
	$(PY) benchmarks/io_manager.py
	$(PY) benchmarks/export.py
	$(PY) benchmarks/export_instance.py --postgres
	$(PY) benchmarks/event_log_storage.py --postgres
	$(PY) benchmarks/startup.py
	$(PY) benchmarks/validate_startup.py

clean:
	rm -rf $(VENV) .dagster_home .pytest_cache
