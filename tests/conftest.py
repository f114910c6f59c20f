import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh sqlite tracking store for the test (no run or experiment id inherited); its
    client. Tests whose store needs more (a trained grid, an experiment) define their own."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
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
