"""The Kubernetes files, checked with MLflow's own code and no cluster: k8s/backend_config.json,
k8s/job_template.yaml, the docker_env project k8s/MLproject and its command (k8s/train_job.py)."""
import importlib.util
import json
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
sys.path.insert(0, str(ROOT / "pipelines"))
sys.path.insert(0, str(K8S))

import cells  # noqa: E402

# the placeholders of MLflow's documented job template, which MLflow overwrites
PLACEHOLDERS = {
    "name": "{replaced with MLflow Project name}",
    "image": "{replaced with URI of Docker image created during Project execution}",
    "command": ["{replaced with MLflow Project entry point command}"],
}
RFC1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _mlflow_kubernetes(monkeypatch):
    """mlflow.projects.kubernetes, importable without the `kubernetes` client installed."""
    if importlib.util.find_spec("kubernetes") is None:
        stub = types.ModuleType("kubernetes")
        stub.config = types.ModuleType("kubernetes.config")
        exc = types.ModuleType("kubernetes.config.config_exception")
        exc.ConfigException = type("ConfigException", (Exception,), {})
        stub.config.config_exception = exc
        for name, mod in (("kubernetes", stub), ("kubernetes.config", stub.config),
                          ("kubernetes.config.config_exception", exc)):
            monkeypatch.setitem(sys.modules, name, mod)
    import mlflow.projects

    spec = importlib.util.find_spec("mlflow.projects.kubernetes")
    module = importlib.util.module_from_spec(spec)  # a private copy: sys.modules untouched
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def config(monkeypatch):
    monkeypatch.chdir(ROOT)  # `mlflow run .` runs the grid in the project directory
    return json.loads((K8S / "backend_config.json").read_text())


def test_backend_config_has_what_mlflow_requires(config):
    from mlflow.projects import _parse_kubernetes_config

    assert {"kube-job-template-path", "repository-uri"} <= set(config)  # required
    assert set(config) <= {"kube-job-template-path", "repository-uri", "kube-context"}
    parsed = _parse_kubernetes_config(dict(config))  # MLflow's own check; loads the template
    assert parsed["kube-job-template"]["kind"] == "Job"


def test_job_template_is_a_kubernetes_job_with_mlflows_placeholders():
    job = yaml.safe_load((K8S / "job_template.yaml").read_text())
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["metadata"]["name"] == PLACEHOLDERS["name"]
    assert RFC1123_LABEL.match(job["metadata"]["namespace"])  # MLflow submits into it
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] in ("Never", "OnFailure")  # the only ones a Job allows
    container = spec["containers"][0]
    for field, placeholder in PLACEHOLDERS.items():
        assert container[field] == placeholder, field
    # MLflow appends its variables to this list: it must hold name/value pairs only
    assert all(set(e) == {"name", "value"} and isinstance(e["value"], str)
               for e in container.get("env", []))
    names = {v["name"] for v in spec.get("volumes", [])}
    assert {m["name"] for m in container.get("volumeMounts", [])} <= names
    gpu = container["resources"]
    assert gpu["requests"].get("nvidia.com/gpu") == gpu["limits"].get("nvidia.com/gpu")


def test_kubernetes_needs_the_docker_env_project_not_the_root_one(config):
    """MLflow's kubernetes backend refuses a project without docker_env (the root MLproject
    has conda_env, and cannot have both): cells go through k8s/MLproject."""
    from mlflow.projects._project_spec import load_project
    from mlflow.projects.docker import validate_docker_env

    root = load_project(str(ROOT))
    assert root.docker_env is None
    with pytest.raises(Exception):
        validate_docker_env(root)
    project = load_project(str(K8S))
    validate_docker_env(project)
    assert RFC1123_LABEL.match(project.name), project.name
    image = project.docker_env["image"]
    assert image.rsplit(":", 1)[0] == config["repository-uri"], (image, config)
    assert "train" in project._entry_points


@pytest.mark.parametrize("extra", [{}, {"dataset": "gaussian", "data_options":
                                        '{"shape": [8, 8, 1], "train_size": 200}'}])
def test_mlflow_fills_the_template_into_a_job_that_trains_the_cell(config, monkeypatch, extra):
    """The job MLflow would submit for a grid cell, built by MLflow's own functions, runs
    train.py with exactly that cell's parameters."""
    from mlflow.projects import _parse_kubernetes_config
    from mlflow.projects._project_spec import load_project
    from mlflow.projects.utils import get_entry_point_command

    import train
    import train_job

    kb = _mlflow_kubernetes(monkeypatch)
    cell = cells.normalize({"arch": "resnet18", "dataset": "cifar10", "width": 0.25,
                            "epochs": 100, "lr": 0.01, **extra})
    key = cells.cell_key(cell)
    # what grid.py passes for a cell (executors.KubernetesExecutor)
    params = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in cell.items()}
    params.update(cell_key=key, parent_run_id="0123456789abcdef")
    project = load_project(str(K8S))
    command = get_entry_point_command(project, "train", params, None)
    template = _parse_kubernetes_config(dict(config))["kube-job-template"]
    env = {"MLFLOW_RUN_ID": "r1", "MLFLOW_TRACKING_URI": "http://mlflow.cna-tf:5000",
           "MLFLOW_EXPERIMENT_ID": "7"}
    job = kb._get_kubernetes_job_definition(
        project.name, project.docker_env["image"], "sha256:" + "0" * 64,
        kb._get_run_command(command), env, template)

    assert "{replaced" not in json.dumps(job)
    assert len(job["metadata"]["name"]) <= 63
    assert RFC1123_LABEL.match(job["metadata"]["name"]), job["metadata"]["name"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert RFC1123_LABEL.match(container["name"])
    assert container["image"] == project.docker_env["image"] + "@sha256:" + "0" * 64
    got_env = {e["name"]: e["value"] for e in container["env"]}
    assert {k: got_env[k] for k in env} == env and got_env["CNA_TF_BACKUP_DIR"] == "/backup"
    assert all(isinstance(e, dict) for e in container["env"])

    argv = container["command"]
    assert argv[:2] == ["python", "k8s/train_job.py"]
    args = train.parse_args(train_job.argv(argv[2:]))
    got = cells.normalize({k: getattr(args, k) for k in cells.ALL_PARAMS})
    assert got == cell
    assert args.cell_key == key and args.parent_run_id == "0123456789abcdef"


def test_train_job_undoes_one_level_of_quoting_only():
    import shlex

    import train_job

    for value in ["", "mlp", "0.05", '{"shape": [8, 8, 1]}', "it's", "a b"]:
        assert train_job.unquote(shlex.quote(value)) == value
    # arguments given by hand (already unquoted by a shell) pass unchanged
    for raw in ['{"shape":[8,8,1]}', "mlp", "--arch", "0.05"]:
        assert train_job.unquote(raw) == raw


def test_dockerfile_installs_the_project_where_the_job_runs_it():
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.split()[:2] for line in text.splitlines() if line and line[0].isupper()]
    assert ["WORKDIR", "/app"] in lines
    for path in ("pipelines", "configs", "k8s", "cna_tf", "MLproject"):
        assert any(ln[0] == "COPY" and ln[1] == path for ln in lines), path
