# pacsmigrate: `make demo` and `make test` are the whole set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
AZURITE := .tools/azurite/node_modules/.bin/azurite-blob

.PHONY: install demo test test-all bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(MAKE) $(AZURITE)
	touch $(STAMP)

# Azurite (Microsoft's Azure Storage emulator, from npm) for the Azure tests and benchmarks.
$(AZURITE):
	npm install --no-save --no-audit --no-fund --loglevel=error --prefix .tools/azurite azurite@3.35.0

demo: install
	$(BIN)/python examples/demo.py

# Everything but soaks: moto and the SeaweedFS strict tier, kill-and-resume included.
# TEST_WORKERS pytest processes (pytest-xdist), each taking whole test files (each starts
# its own servers): about half the suite's time waits on subprocesses and servers, so two
# halve its wall time on two CPUs. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: install $(AZURITE)
	$(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile

# Soaks too (long kill/resume runs).
test-all: install $(AZURITE)
	$(BIN)/python -m pytest -q -ra -m '' -n $(TEST_WORKERS) --dist loadfile

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
	rm -rf $(VENV) .tools demo-work bench-work .pytest_cache .mypy_cache
