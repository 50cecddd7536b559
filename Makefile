# The README's two commands: `make demo` and `make test`. Both create .venv and install with the pin.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,ray]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/edgeship demo --out runs/demo --force

# pytest-xdist workers; each test file stays on one worker (its module fixtures run once).
# TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest --ignore=tests/perf -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: $(STAMP)
	mkdir -p runs
	$(BIN)/python -m pytest tests/perf --benchmark-only --benchmark-json runs/bench.json $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs
