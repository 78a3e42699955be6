# `make demo` and `make test` install into a local venv on first use (torch pinned in pyproject.toml).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= runs/demo

.PHONY: install test demo lint bench reproduce gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2  # 2 workers (pytest-xdist): 7 min instead of 10 on 2 cores, measured

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/dnc train hydra.run.dir=$(DEMO_DIR)
	$(VENV)/bin/dnc analyze run_dir=$(DEMO_DIR)
	$(VENV)/bin/dnc plot run_dir=$(DEMO_DIR)
	@echo "demo done: tables in $(DEMO_DIR)/analysis/, figures in $(DEMO_DIR)/figures/"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	status=0; for part in analyze rfm agop_precision measure measure_scale distributed; do $(PY) bench/bench_$$part.py || status=1; done; exit $$status

# every experiment of results/, resumable (results/scripts/reproduce.sh: DNC_SCALE=cpu|paper|smoke, DNC_DATA, ...)
reproduce: $(STAMP)
	bash results/scripts/reproduce.sh

# the GPU check (bench/gpu_check.py): never part of `make test`. It uses the venv when there is one, else python3 (a
# GPU machine with the project installed by `pip install --no-deps -e .`), and installs nothing.
# GPU_CHECK_ARGS: e.g. --out $$OUT/gpu_check.md, or --cpu-dry-run
GPU_PY := $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PY) bench/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
