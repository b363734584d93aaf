# On a fresh machine with Python 3.11, each of these does all the set-up it needs:
#   make run    create .venv, install imgpipe, run the whole pipeline (dvc repro)
#   make test   create .venv, install imgpipe with its test tools, run the tests
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
# DVC stages run `python stages/...`: put the project's environment first on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test install clean

run: install
	dvc repro

# Two processes (pytest-xdist), one thread each (two torch threads a process on two cores fight over them: a
# training took 7 s or 100 s by the luck of the scheduler). The test pipeline is built once and forked; each
# process starts the servers its own tests need; the rest is shared out a module at a time (loadscope), so a
# module's fixture (the queued experiments, say) is built once, not once per process, in collection order, which
# tests/conftest.py makes longest first (--no-loadscope-reorder).
test: install
	OMP_NUM_THREADS=1 pytest -n 2 --dist loadscope --no-loadscope-reorder

install: $(VENV)/.installed

# Reinstalls only when the dependencies change; the package itself is installed editable.
$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --editable ".[test]"
	touch $@

# Removes every pipeline output and the MLflow store; the next `make run` rebuilds them.
clean:
	rm -rf data models mlflow.db mlruns dvc_plots
