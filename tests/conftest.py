import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
# the MLflow servers tests start (`make ui`, `mlflow server`) without MLflow 3's GenAI job
# runners: no cna_tf test uses them, and they are ~20 Python processes per session
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from _stores import sqlite_store  # noqa: E402


# The longest test files first. `make test` hands whole files (--dist loadfile) to its
# pytest-xdist workers in this collection order (--no-loadscope-reorder; xdist's default puts
# the files with the most tests first, and the long end-to-end files, which have few, last):
# the long ones start at once and the many short files fill in at the end, so that no
# worker idles while another finishes a long file. Measured with --durations on the 2-core
# machine (issue 36); a file not listed runs after them, one with a slow test before the others.
LONGEST_FIRST = (
    "test_docs.py", "test_bench_smoke.py", "test_gap_study_conv.py", "test_ui.py",
    "test_servers.py", "test_ray.py", "test_faults.py", "test_reproduce.py", "test_score.py",
    "test_pipelines.py", "test_paper_mnist.py", "test_stop_loss_flatness.py",
)


def pytest_collection_modifyitems(config, items):
    """Orders the files as `LONGEST_FIRST` says; a file's own tests keep their order."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    slow = {item.path.name for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: rank.get(item.path.name,
                                         len(rank) + (item.path.name not in slow)))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh sqlite tracking store for the test (no run or experiment id inherited); its
    client. Tests whose store needs more (a trained grid, an experiment) define their own."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(tmp_path / "m.db"))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    return mlflow.MlflowClient()


@pytest.fixture(autouse=True)
def _isolated_mlflow_state():
    """Give every test a clean MLflow process state.

    ``mlflow.set_tracking_uri`` and ``mlflow.set_experiment`` write module globals *and*
    ``MLFLOW_TRACKING_URI`` / ``MLFLOW_EXPERIMENT_ID`` into ``os.environ``; a global URI
    outranks a test's ``monkeypatch.setenv``, so without this reset one test's store and
    experiment id leak into the next (and depend on test order).
    """
    saved = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    yield
    try:
        import mlflow
        from mlflow.tracking import fluent
        from mlflow.tracking._tracking_service import utils as tracking_utils
    except ImportError:  # pragma: no cover - mlflow is a hard dependency
        return
    while mlflow.active_run() is not None:
        try:
            mlflow.end_run()
        except Exception:  # the run's store may be gone with tmp_path
            fluent._active_run_stack.get().clear()
    tracking_utils._tracking_uri = None
    fluent._active_experiment_id = None
    for k in [k for k in os.environ if k.startswith("MLFLOW_")]:
        if k not in saved:
            del os.environ[k]
    os.environ.update(saved)


@pytest.fixture(scope="session")
def shared_grid(tmp_path_factory):
    """The session's one trained tiny grid and its MLflow store, read-only (tests/_shared_grid.py
    says what is in it): 8 saved digits MLPs trained by pipelines/grid.py in ``cna_tf-demo``,
    once for all pytest-xdist workers. A test that writes to a store uses ``.copy(dest)``."""
    from _shared_grid import shared_grid as build

    return build(tmp_path_factory)
