# pacsmigrate: `make demo` and `make test` are the whole set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: install
	$(BIN)/python examples/demo.py

# Everything but soaks: moto and the SeaweedFS strict tier, kill-and-resume included.
test: install
	$(BIN)/python -m pytest -q -ra

# Soaks too (long kill/resume runs).
test-all: install
	$(BIN)/python -m pytest -q -ra -m ''

# The benchmark suite vs s5cmd, rclone and the aws cli (see benchmarks/README.md); the full
# suite takes hours on a slow pipeline. BENCH_ARGS=--quick checks it in under 10 minutes.
bench: install
	$(BIN)/pip install -q -r benchmarks/requirements.txt
	benchmarks/install-peers.sh
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check pacsmigrate tests benchmarks examples
	$(BIN)/mypy pacsmigrate

clean:
	rm -rf $(VENV) demo-work bench-work .pytest_cache .mypy_cache
