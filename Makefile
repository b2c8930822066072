# Two commands do all the set-up: `make demo` (main job) and `make test`.
# Each creates the virtual environment and installs the project when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The main job: the default MNIST-1D study (about 20 trials), its best configuration
# retrained with 3 seeds for test figures, and a report with plots.
demo: $(STAMP)
	$(VENV)/bin/research study run studies/mnist1d_kd.yaml
	$(VENV)/bin/research study finalize mnist1d_kd --seeds 3
	$(VENV)/bin/research study report mnist1d_kd

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
