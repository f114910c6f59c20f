"""Docs are tests: every command README.md and docs/*.md show runs here, exactly as written.

The commands are collected from the docs' fenced shell blocks (```bash, sh, shell, console).
Each one is in exactly one table below:

* ``RUN``: a test runs it as written, in a subprocess with the project's venv first on PATH
  (as `. .venv/bin/activate` or the make targets set it), through ``mlflow run`` where it is an
  ``mlflow run`` line, with at most size parameters appended; the tracking store, backups and
  runs go to a temporary folder.
* ``CI``: ``.ci/run`` runs it on every clean clone (``make test`` cannot run inside itself).
* ``ELSEWHERE``: another test runs it as written and checks its output (named there).
* ``NOT_HERE`` (or ``NOT_HERE_PREFIX``, by its start): it needs what this machine and CI do not have (a Docker engine, a Kubernetes
  or remote Ray cluster, a PostgreSQL + S3 server on a public interface); each says why and
  which test covers the part that can run here.

A documented command in no table, or a table entry no doc shows any more, fails
``test_every_documented_command_is_covered``.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = ("bash", "sh", "shell", "console")

#: command -> size arguments appended when the test runs it
RUN: Dict[str, str] = {
    "make install": "",
    ". .venv/bin/activate": "",
    "make ui": "",
    "make demo-quick": "",
    "make reproduce": 'PARAMS="-P quick=true -P seeds=1 -P datasets=digits"',
    "make test-fast": "TESTS=tests/test_measures.py",
    "mlflow run . --env-manager local -e grid --experiment-name cna_tf-demo -P config=demo "
    "-P workers=2": "-P max_cells=2",
    "mlflow run . --env-manager local -e compare --experiment-name cna_tf-demo": "",
    "mlflow run . --env-manager local -e compare --experiment-name cna_tf-demo "
    "-P all_runs=true": "",
    "mlflow run . --env-manager local -e train -P arch=resnet18 -P dataset=mnist -P width=0.25 "
    "-P suite=cheap":
        "-P epochs=1 -P n_train=256 -P n_test=128 -P max_samples=128 -P batch_size=64",
    "mlflow run . --env-manager local -e reproduce -P quick=true": "-P seeds=1 -P datasets=digits",
    "mlflow run . --env-manager local -e score --experiment-name cna_tf-demo "
    "-P measure=examples/pgdl_measure.py:input_grad_norm": "",
    "mlflow run . --env-manager local": "-P max_cells=2",
    "mlflow run . --env-manager local -e grid -P config=demo -P backend=ray": "-P max_cells=2",
    "python -m cna_tf.tracking url --experiment cna_tf-demo": "",
}
#: commands `.ci/run` runs on every clean clone
CI = ("make test", "make demo")
#: command -> the test (file::function) that runs it as written, with its output checked there
ELSEWHERE: Dict[str, str] = {
    ".venv/bin/python examples/keras_mnist_convnet.py":
        "tests/test_docs_keras.py::test_the_documented_command_runs_the_example",
    # with BENCH_ARGS="--smoke --out DIR"; each script's JSON is checked there
    "make bench": "tests/test_bench_smoke.py::test_make_bench_runs_every_script",
    # with an empty HOME: the paper's data is missing, the plan says so
    "mlflow run . --env-manager local -e grid -P config=paper -P dry_run=true":
        "tests/test_grid_data.py::test_the_documented_dry_run_prints_the_plan",
    # with HOME holding a small task the test writes in the organizers' layout
    "mlflow run . --env-manager local -e pgdl -P task=$HOME/pgdl/public_data/input_data/task1_v4":
        "tests/test_pgdl.py::test_the_documented_import_makes_one_finished_run_per_model",
    "mlflow run . --env-manager local -e score --experiment-name pgdl-task1_v4 "
    "-P measure=examples/pgdl_measure.py:input_grad_norm":
        "tests/test_pgdl.py::test_score_hands_the_measure_the_tasks_training_data",
    "mlflow run . --env-manager local -e compare --experiment-name pgdl-task1_v4 "
    "-P all_runs=true":
        "tests/test_pgdl.py::test_compare_ranks_over_the_tasks_hyperparameters_by_pgdls_cmi",
    # into a temporary SITE_DIR; the site is then opened in Chromium there
    "make docs": "tests/test_site.py::test_make_docs_builds_every_page_strict",
    # on a free DOCS_PORT, without executing the tutorial
    "make docs-serve": "tests/test_site.py::test_make_docs_serve_serves_the_site_on_loopback",
}
#: command -> why it cannot run here (and what covers the rest)
NOT_HERE: Dict[str, str] = {
    'pip install "psycopg[binary]" boto3':
        "installs packages on a tracking server; psycopg is in requirements.lock and "
        "tests/test_servers.py runs mlflow server on PostgreSQL",
    "export MLFLOW_S3_ENDPOINT_URL=http://minio:9000": "sets a variable for an S3 store",
    "export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...": "credentials for an S3 store",
    "mlflow run . -e grid -P config=paper -P backend=kubernetes "
    "-P backend_config=k8s/backend_config.json -P workers=16":
        "needs a Kubernetes cluster; tests/test_k8s.py checks the backend config, job template "
        "and docker_env project with MLflow's own code",
    'docker build --build-arg TENSORFLOW="tensorflow[and-cuda]" '
    "-t registry.example.com/cna-tf/cna-tf:latest .":
        "needs a Docker engine (none runs on this machine or in CI)",
    "docker push registry.example.com/cna-tf/cna-tf:latest": "needs a Docker engine and a registry",
    "export MLFLOW_TRACKING_URI=https://mlflow.example.com": "sets a variable for a remote server",
    "export KUBE_MLFLOW_TRACKING_URI=http://mlflow.cna-tf.svc:5000":
        "sets a variable for a Kubernetes cluster",
    "python pipelines/grid.py --config demo --backend ray --ray_address auto":
        "joins the Ray cluster of the node it runs on; tests/test_ray.py runs the grid against "
        "a real `ray start --head` on 127.0.0.1",
    "mlflow run . --env-manager local -e grid -P config=paper -P backend=ray "
    "-P ray_address=ray://<head>:10001 -P ray_gpus_per_cell=1":
        "needs a remote Ray cluster with GPUs and the paper's datasets",
    "mlflow run . --env-manager local -e grid -P config=paper -P datasets=mnist":
        "19 full-size networks (ResNet-101 on 60,000 images for 40 epochs among them): days on "
        "this CPU; tests/test_paper_mnist.py trains two of these cells shrunk in size only",
    'make reproduce PARAMS="-P datasets=mnist -P epochs=100 -P batch_size=512 -P workers=2"':
        "the paper's MLP on the full MNIST, 3 seeds x 100 epochs: over an hour on this CPU, run "
        "once by hand (docs/results/mnist.md); tests/test_reproduce.py runs the same step with "
        "workers=2 on mnist5k and tests/test_paper_mnist.py trains on the full MNIST",
    "mlflow run . --env-manager local -e grid --experiment-name cna_tf-gap_study "
    "-P config=gap_study -P workers=2":
        "96 MLPs on full MNIST trained to cross-entropy 0.01 with flatness: 69 minutes on this "
        "CPU, run once by hand (docs/results/gap_study.md); tests/test_regularization_axes.py "
        "trains its weight-decay axis through train.py and tests/test_pipelines.py runs a grid",
    "mlflow run . --env-manager local -e grid --experiment-name cna_tf-gap_study_conv "
    "-P config=gap_study_conv -P workers=2":
        "48 VGG-18 and ResNet-18 networks on full-MNIST subsets trained to cross-entropy 0.01 with "
        "flatness: 87 minutes on this CPU, run once by hand (docs/results/gap_study_conv.md); "
        "tests/test_gap_study_conv.py trains two of its cells, shrunk, through the same entry point",
    "mlflow run . --env-manager local -e compare --experiment-name cna_tf-gap_study_conv":
        "needs the gap_study_conv grid above; tests/test_compare_sign_error.py and "
        "tests/test_compare_intervals.py run compare with --experiment-name's experiment",
    "mlflow run . --env-manager local -e compare --experiment-name cna_tf-gap_study":
        "needs the gap_study grid above; tests/test_compare_intervals.py runs compare with "
        "--experiment-name's experiment and checks its intervals, and the RUN table runs the "
        "same line on the demo grid",
    "python -m cna_tf.data.fetch --config paper":
        "downloads about 600 MB from the datasets' origins (no internet here); "
        "tests/test_fetch.py fetches every format from a server on 127.0.0.1 through "
        "CNA_TF_DATA_MIRROR and loads it, and tries each way a download can fail",
    "mlflow run . --env-manager local -e grid -P config=paper -P backend=ray "
    "-P ray_gpus_per_cell=1 -P workers=4":
        "needs GPUs and the paper's datasets (about 115 GPU-hours); tests/test_ray.py runs the "
        "grid on a local Ray runtime, tests/test_grid_data.py its data check",
    "kubectl -n cna-tf exec -it <head pod> -- bash": "needs a Kubernetes cluster",
    "curl -LO http://storage.googleapis.com/gresearch/pgdl/public_data.zip":
        "downloads PGDL's public data (8.8 GB; no internet here); tests/test_pgdl.py writes small "
        "tasks in its layout and runs the documented pgdl, score and compare lines on them",
    "unzip public_data.zip -d ~/pgdl": "unpacks that download",
    "cd /app": "a folder inside the Ray head's container",
    "mlflow run . --env-manager local -e grid -P config=paper -P backend=ray "
    "-P ray_address=ray://cna-tf-head-svc:10001 -P ray_gpus_per_cell=1":
        "runs inside a Ray cluster on Kubernetes",
}


#: command prefix -> why no command starting with it runs here (the docs' public tracking server,
#: whose exact line binds every interface: tests never spell such an address)
NOT_HERE_PREFIX: Dict[str, str] = {
    "mlflow server --backend-store-uri postgresql://mlflow:PASSWORD@postgres:5432/mlflow":
        "needs a PostgreSQL host and an S3 bucket and serves on a public interface; "
        "tests/test_servers.py runs the same server on a local PostgreSQL at 127.0.0.1",
}


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (a ``#`` outside quotes, after a space)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def documented_commands() -> List[Tuple[str, str]]:
    """(doc file, command) of every command in the docs' fenced shell blocks, in order."""
    out = []
    fence = re.compile(r"^[ \t]*```(\w*)[ \t]*\n(.*?)^[ \t]*```", re.S | re.M)
    for doc in DOCS:
        for m in fence.finditer(doc.read_text()):
            if m.group(1) not in SHELL_FENCES:
                continue
            pending = ""
            for raw in m.group(2).splitlines():
                line = _strip_comment(raw.strip())
                if line.startswith("$ "):
                    line = line[2:]
                if line.endswith("\\"):
                    pending += line[:-1].strip() + " "
                    continue
                command = (pending + line).strip()
                pending = ""
                if command:
                    out.append((str(doc.relative_to(ROOT)), " ".join(command.split())))
    return out


def test_the_collector_joins_lines_and_drops_comments(tmp_path, monkeypatch):
    doc = tmp_path / "x.md"
    doc.write_text("text\n```bash\nmake demo   # a comment\nmlflow run . \\\n    -P a='x # y'\n"
                   "```\n```python\nprint(1)\n```\n   ```sh\n   $ make ui\n   ```\n")
    monkeypatch.setattr(sys.modules[__name__], "DOCS", [doc])
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert documented_commands() == [("x.md", "make demo"), ("x.md", "mlflow run . -P a='x # y'"),
                                     ("x.md", "make ui")]


def test_every_documented_command_is_covered():
    documented = {c for _, c in documented_commands()}
    tables = [set(RUN), set(CI), set(NOT_HERE), set(ELSEWHERE)]
    assert sum(map(len, tables)) == len(set().union(*tables)), "a command in two tables"
    covered = set().union(*tables)
    by_prefix = {c for c in documented if c.startswith(tuple(NOT_HERE_PREFIX))}
    assert all(any(c.startswith(p) for c in documented) for p in NOT_HERE_PREFIX)
    missing = sorted(documented - covered - by_prefix)
    assert not missing, ("documented commands no test runs (add each to RUN with its size "
                         f"parameters, or to NOT_HERE with why): {missing}")
    stale = sorted(covered - documented)
    assert not stale, f"tables name commands no doc shows any more: {stale}"
    for command, where in ELSEWHERE.items():
        path, function = where.split("::")
        assert f"def {function}(" in (ROOT / path).read_text(), (command, where)


def test_ci_runs_the_readme_commands_in_order():
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    ran = [ln for ln in lines if ln in CI]
    assert ran == list(CI), f".ci/run must run {CI} in this order, runs {ran}"


# -- running them ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One tracking store and backup folder for the module's commands (compare reads the grid's)."""
    d = tmp_path_factory.mktemp("docs")
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               MLFLOW_TRACKING_URI=f"sqlite:///{d}/mlflow.db", CNA_TF_BACKUP_DIR=str(d / "bk"),
               TF_CPP_MIN_LOG_LEVEL="3", RAY_USAGE_STATS_ENABLED="0")
    env.pop("MLFLOW_RUN_ID", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    env["CNA_TF_DOCS_TMP"] = str(d)
    return d, env


def run_documented(command: str, env: Dict[str, str], timeout: int = 900
                   ) -> subprocess.CompletedProcess:
    """Runs a documented command as written (plus its size arguments) in the project folder."""
    line = f"{command} {RUN[command]}".strip()
    proc = subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"`{line}` exited {proc.returncode}:\n" \
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _client(env):
    import mlflow

    return mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])


GRID = ("mlflow run . --env-manager local -e grid --experiment-name cna_tf-demo -P config=demo "
        "-P workers=2")


@pytest.fixture(scope="module")
def demo_grid(store):
    d, env = store
    return run_documented(GRID, env)


@pytest.mark.slow
def test_grid_line_names_the_grid_and_its_cells(store, demo_grid):
    d, env = store
    assert "[2/2] FINISHED" in demo_grid.stdout
    client = _client(env)
    exp = client.get_experiment_by_name("cna_tf-demo")
    grid = client.search_runs([exp.experiment_id], "tags.`cna_tf.role` = 'grid'")
    assert len(grid) == 1
    run = grid[0]
    assert run.info.run_name == "grid-demo"
    # what `mlflow run` logged, as given, and what the step resolved: never the same key twice
    assert run.data.params["config"] == "demo" and run.data.params["max_cells"] == "2"
    assert run.data.params["resolved.cells"] == "2"
    assert "resolved.config" not in run.data.params  # the same as given
    kids = client.search_runs([exp.experiment_id],
                              f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(kids) == 2
    for kid in kids:
        assert kid.info.status == "FINISHED"
        assert kid.info.run_name.startswith("mlp/digits w=") and " seed=" in kid.info.run_name
        assert kid.info.run_name in demo_grid.stdout  # the progress line's label


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    "mlflow run . --env-manager local -e compare --experiment-name cna_tf-demo",
    "mlflow run . --env-manager local -e compare --experiment-name cna_tf-demo -P all_runs=true",
])
def test_compare_lines_rank_the_grid(store, demo_grid, command):
    d, env = store
    proc = run_documented(command, env)
    assert "Correlation with `gen_gap`" in proc.stdout
    client = _client(env)
    exp = client.get_experiment_by_name("cna_tf-demo")
    runs = client.search_runs([exp.experiment_id], "tags.`cna_tf.role` = 'compare'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    run = runs[0]
    assert "| cna_margin |" in run.data.tags["mlflow.note.content"]  # the run's Description
    all_runs = "all_runs=true" in command
    assert run.data.params["all_runs"] == ("true" if all_runs else "false")
    grid = client.search_runs([exp.experiment_id], "tags.`cna_tf.role` = 'grid'")[0]
    assert run.data.params["resolved.grid_run_id"] == ("all" if all_runs else grid.info.run_id)
    assert run.data.params["grid_run_id"] == "''"  # as mlflow run logged it, never changed
    assert run.info.run_name == ("compare" if all_runs else "compare-demo")


SCORE = ("mlflow run . --env-manager local -e score --experiment-name cna_tf-demo "
         "-P measure=examples/pgdl_measure.py:input_grad_norm")


@pytest.mark.slow
def test_score_line_then_compare_ranks_the_example_measure(store, demo_grid):
    """README "Score your own measure": the demo's saved networks scored, then ranked."""
    d, env = store
    proc = run_documented(SCORE, env)
    assert "2 scored, 0 skipped (already scored), 0 failed, 0 without a saved model" in proc.stdout
    client = _client(env)
    exp = client.get_experiment_by_name("cna_tf-demo")
    kids = client.search_runs([exp.experiment_id], "tags.`cna_tf.role` = 'train'")
    assert kids and all("input_grad_norm" in r.data.metrics for r in kids)
    assert all('"spec": "examples/pgdl_measure.py:input_grad_norm"'
               in r.data.tags["cna_tf.score.input_grad_norm"] for r in kids)
    again = run_documented(SCORE, env)  # the same line again: nothing to do
    assert "0 scored, 2 skipped (already scored)" in again.stdout
    ranked = run_documented(
        "mlflow run . --env-manager local -e compare --experiment-name cna_tf-demo", env)
    points, intervals = ranked.stdout.split("Seed-bootstrap intervals", 1)
    assert "| input_grad_norm | " in points
    assert "| input_grad_norm | " in intervals


@pytest.mark.slow
def test_train_line_logs_what_it_was_given(store):
    d, env = store
    command = ("mlflow run . --env-manager local -e train -P arch=resnet18 -P dataset=mnist "
               "-P width=0.25 -P suite=cheap")
    run_documented(command, env)
    client = _client(env)
    run = client.search_runs([client.get_experiment_by_name("Default").experiment_id],
                             "tags.`cna_tf.role` = 'train' and params.arch = 'resnet18'")[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["arch"] == "resnet18" and run.data.params["epochs"] == "1"
    assert run.data.tags["cna_tf.n_train"] == "256" and run.data.tags["dataset"] == "mnist"


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    "mlflow run . --env-manager local -e reproduce -P quick=true",
    "make reproduce",
])
def test_reproduce_lines_write_the_report(store, command):
    d, env = store
    proc = run_documented(command, env)
    assert "report.md logged" in proc.stdout
    client = _client(env)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.`cna_tf.role` = 'reproduce'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    params = runs[0].data.params
    assert params["quick"] == "true" and params["epochs"] == "20"  # as given
    assert params["resolved.epochs"] == "2"                       # what quick trained


@pytest.mark.slow
def test_main_line_runs_grid_then_compare(store):
    d, env = store
    proc = run_documented("mlflow run . --env-manager local", env)
    assert "Correlation with `gen_gap`" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_ray_line_trains_on_a_local_ray_runtime(store):
    d, env = store  # a store of its own: in the main line's, the same grid is already finished
    env = dict(env, MLFLOW_TRACKING_URI=f"sqlite:///{d}/ray.db", CNA_TF_BACKUP_DIR=str(d / "rbk"))
    proc = run_documented("mlflow run . --env-manager local -e grid -P config=demo "
                          "-P backend=ray", env)
    assert "a local Ray runtime" in proc.stdout and "[2/2] FINISHED" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("command", ["make install", "make demo-quick", "make test-fast"])
def test_make_targets(store, command):
    d, env = store
    proc = run_documented(command, env, timeout=1800)
    if command == "make demo-quick":
        assert "CNA-M" in proc.stdout and "gen_gap" in proc.stdout
    elif command == "make test-fast":
        assert re.search(r"\d+ passed", proc.stdout)


@pytest.mark.slow
def test_activating_the_venv_gives_the_project(store):
    d, env = store
    env = dict(env, PATH=os.environ.get("PATH", ""))  # the activate script puts the venv first
    proc = run_documented(". .venv/bin/activate", env)
    check = subprocess.run(["bash", "-c", ". .venv/bin/activate && python -c 'import cna_tf, "
                            "keras, mlflow; print(cna_tf.__file__)' && command -v mlflow"],
                           cwd=ROOT, env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    module, mlflow_cli = check.stdout.split()[-2:]
    assert Path(module).resolve() == (ROOT / "cna_tf" / "__init__.py").resolve()
    assert Path(mlflow_cli).resolve() == (ROOT / ".venv" / "bin" / "mlflow").resolve()
    assert proc.returncode == 0


def _runs_link(env, port: int = 5000) -> str:
    """The link to cna_tf-demo's runs (tests/test_ui_links.py checks its parts)."""
    exp = _client(env).get_experiment_by_name("cna_tf-demo")
    return (f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs"
            "?workflowType=machine_learning&viewStateShareKey=cna_tf")


@pytest.mark.slow
def test_url_line_prints_the_link_to_the_demo_runs(store, demo_grid):
    d, env = store
    proc = run_documented("python -m cna_tf.tracking url --experiment cna_tf-demo", env)
    assert proc.stdout.strip().splitlines()[-1] == _runs_link(env)
    tags = _client(env).get_experiment_by_name("cna_tf-demo").tags
    assert "mlflow.sharedViewState.cna_tf" in tags  # the view the link opens


@pytest.mark.slow
def test_make_ui_serves_the_runs_on_loopback(store, demo_grid):
    d, env = store
    env = {k: v for k, v in env.items() if not k.startswith("UI_")}
    proc = subprocess.Popen(["bash", "-c", "make ui"], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, body = time.time() + 180, ""
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen("http://127.0.0.1:5000/health", timeout=2) as r:
                    body = r.read().decode()
                break
            except OSError:
                time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    assert body.strip() == "OK", out[-3000:]
    # its start-up line, before the server's: the link to the demo's runs, not to MLflow's
    # GenAI overview (only a stale venv's install lines come before it)
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if "mlflow ui --backend-store-uri" in line)
    assert lines[first - 1] == ("MLflow UI on http://127.0.0.1:5000; the cna_tf-demo runs: "
                                + _runs_link(env)), out[:3000]
