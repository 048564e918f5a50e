# make demo: set up and run the whole pipeline on the built-in synthetic data (CPU, minutes).
# make test: set up and run the test suite (what .ci/run calls).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: setup test demo
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -r requirements.txt
	touch $@

test: setup
	$(PY) -m pytest -q -n 2 --dist worksteal -m "not demo"
	$(PY) -m pytest -q -m demo

demo: setup
	$(PY) run_pipeline.py --demo --work_dir demo_run
