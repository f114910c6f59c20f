# Two commands set everything up from a bare clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The other Keras backends, tested against TensorFlow by tests/test_backends.py. torch is pinned
# to the CPU build: a plain `torch` pulls a multi-GB CUDA build.
BACKENDS ?= "jax[cpu]" "torch==2.13.0"
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1
# Runs go to a local sqlite store; browse them with `make ui`.
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
WORKERS ?= 2
# pytest-xdist processes for `make test`; --dist loadfile keeps a file's module fixtures in one.
TEST_WORKERS ?= 2
MLFLOW_RUN := PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/mlflow run . --env-manager local

.PHONY: install demo demo-quick reproduce ui test test-fast bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,ray]" $(BACKENDS)
	touch $(STAMP)

install: $(STAMP)

# The demo grid (17 networks on digits and Gaussian noise), then its comparison table.
demo: $(STAMP)
	$(MLFLOW_RUN) -e grid --experiment-name cna_tf-demo -P config=demo -P workers=$(WORKERS)
	$(MLFLOW_RUN) -e compare --experiment-name cna_tf-demo -P experiment=cna_tf-demo
	@echo "Browse the runs: $(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1   (or: make ui)"

# The paper's MLP experiments (Figs 1, 3-7) on mnist5k and digits, 3 seeds each, and report.md
# (CNA at init vs end, error per alpha quintile, correlations vs the paper's MNIST row).
reproduce: $(STAMP)
	$(MLFLOW_RUN) -e reproduce --experiment-name cna_tf-reproduce

# One MLP on digits, metrics printed before and after training (no MLflow).
demo-quick: $(STAMP)
	$(PY) -m cna_tf.demo

ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri "$(MLFLOW_TRACKING_URI)" --host 127.0.0.1

test: $(STAMP)
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile --durations=15 tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow" tests

bench: $(STAMP)
	$(PY) bench/bench_alpha.py
	$(PY) bench/bench_probe.py
	$(PY) bench/bench_measures.py
	$(PY) bench/bench_callback.py
	$(PY) bench/bench_grid.py

clean:
	rm -rf $(VENV) .pytest_cache mlruns mlflow.db .cna_backup

# Mutation testing of the numerical core, by hand, not in CI (config: [tool.mutmut] in
# pyproject.toml; scores, kept survivors, wall time: docs/testing.md). One child process: CPU-heavy.
# Mutants go to ./mutants/; `mutmut show <name>` prints one, `mutmut browse` explores them.
.PHONY: mutate
mutate: $(STAMP)
	$(VENV)/bin/mutmut run --max-children 1
	$(VENV)/bin/mutmut results
