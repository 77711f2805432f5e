# spksep: make demo | make test | make bench   (each sets up .venv itself)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo_run

.PHONY: venv demo test bench clean

# The venv is rebuilt only when requirements.txt or pyproject.toml change: torch 2.14.1
# is a CUDA build (~5.7 GB), so reinstalling it on every call would cost minutes.
venv: $(STAMP)
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	-$(VENV)/bin/spksep kernels  # compiled CPU kernels, once per machine (optional: a failure leaves the PyTorch ones)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m spksep_modules.demo --workdir $(DEMO)

test: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q --doctest-modules spksep_modules tests

bench: $(STAMP)
	$(PY) bench/bench.py $(if $(DATA),--data $(DATA))

clean:
	rm -rf $(DEMO) bench/out
