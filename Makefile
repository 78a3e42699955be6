# `make demo` and `make test` install into a local venv on first use (torch pinned in pyproject.toml).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= runs/demo

.PHONY: install test demo lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/dnc train hydra.run.dir=$(DEMO_DIR)
	$(VENV)/bin/dnc analyze run_dir=$(DEMO_DIR) precision=float64  # the digits' early AGOPs need it (README, Precision)
	$(VENV)/bin/dnc plot run_dir=$(DEMO_DIR)
	@echo "demo done: tables in $(DEMO_DIR)/analysis/, figures in $(DEMO_DIR)/figures/"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench/bench_analyze.py; status=$$?; $(PY) bench/bench_rfm.py || status=1; \
	$(PY) bench/bench_measure.py || status=1; exit $$status

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
