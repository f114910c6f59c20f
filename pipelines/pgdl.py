"""MLproject step `pgdl`: a PGDL 2020 task's trained models as finished runs, ready for `score`
and `compare`.

Reads a task directory in the layout of the competition's public data (as its starting kit
reads it): ``model_configs.json`` (per model id: ``hparams``, each with ``current_value``, and
``metrics`` with ``train_acc`` and ``test_acc``), ``model_<id>/config.json`` (``model_config``:
a list of layer dicts, ``layer_name`` a Keras layer class and the rest its arguments;
``input_shape``), ``model_<id>/weights.hdf5`` and, where present, ``weights_init.hdf5`` (Keras 2
HDF5 weights, read with h5py and assigned layer by layer), and the training data
``dataset_1/train/shard_*.tfrecord`` (`cna_tf.data.pgdl`). Where the task's
``model_configs.json`` has no metrics, they are read from
``reference_data/<task>/model_configs.json`` beside the ``input_data`` folder holding the task.

Every model becomes one FINISHED train run of the experiment (default ``pgdl-<task>``):
its hyperparameters as params (their names in tag ``cna_tf.hparams``, which `compare` reads as
the grid axes), PGDL's ``train_acc``, ``test_acc`` and ``gen_gap`` as metrics, the SPEC §1-2 and
§8 measures that need no test data measured on up to 2,000 training points (``cna_train``,
``margin``, ``l2``, ``spectral``, ``l2_path``, ``bound_2018``, ``dist_init``, ``sum_of_fro``; alpha
over the inputs' observed value range, tag ``cna_tf.value_range``), the model as
``model/model.keras`` (what `score` loads), its initial weights as ``model/initial_weights.npz``
(train's format), and tags ``cna_tf.pgdl_task`` and ``cna_tf.pgdl_model``. Params ``dataset``
(``pgdl:<task dir>``) and ``data_options`` (classes and value range) let `score` rebuild the
training set.

Every model is checked (files, JSON, layer classes, weights that fit, data) before any run is
created: a malformed task is one error naming the model and the file, and imports nothing.
Re-running skips the models already imported; a run a killed import left unfinished is
deleted and imported again.

    python pipelines/pgdl.py --task ~/pgdl/public_data/input_data/task1_v4
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import HPARAMS_TAG  # noqa: E402
from params import cli_value, declared, log_launch, log_resolved  # noqa: E402

from cna_tf.data.names import PGDL_PREFIX  # noqa: E402
from cna_tf.tracking import TAG_PREFIX as TAG  # noqa: E402

TASK_FILE = "model_configs.json"
CONFIG = "config.json"
WEIGHTS = "weights.hdf5"
INITIAL = "weights_init.hdf5"
MODEL_ARTIFACT_DIR = "model"
INITIAL_ARTIFACT = "initial_weights.npz"
TASK_TAG = TAG + "pgdl_task"
MODEL_TAG = TAG + "pgdl_model"
#: training points the import measures each model on (train's per-epoch default)
MAX_SAMPLES = 2000
#: params the step logs itself, so no hyperparameter may take these names
RESERVED = ("dataset", "data_options")


class TaskError(ValueError):
    """A malformed PGDL task; the message names the model, the file and the fix."""


@dataclass
class ModelSpec:
    """One model of a task, as its files describe it (nothing loaded yet)."""

    model_id: str
    folder: Path
    hparams: Dict[str, Any]
    train_acc: float
    test_acc: float
    layers: List[Dict[str, Any]]
    input_shape: Tuple[int, ...]

    @property
    def weights(self) -> Path:
        return self.folder / WEIGHTS

    @property
    def initial(self) -> Optional[Path]:
        path = self.folder / INITIAL
        return path if path.is_file() else None

    @property
    def label(self) -> str:
        return f"model {self.model_id}"


def _natural(text: str) -> Tuple:
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text))


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise TaskError(f"{what}: {path} not found")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise TaskError(f"{what}: {path} is not valid JSON: {e}") from None


def _metrics_file(task_dir: Path) -> Optional[Path]:
    """``reference_data/<task>/model_configs.json`` beside the ``input_data`` folder holding
    the task, where the organizers kept the metrics apart; None when there is none."""
    other = task_dir.parent.parent / "reference_data" / task_dir.name / TASK_FILE
    return other if task_dir.parent.name == "input_data" and other.is_file() else None


def _accuracy(metrics: Any, key: str, where: str) -> float:
    value = metrics.get(key) if isinstance(metrics, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not 0 <= value <= 1:
        raise TaskError(f"{where}: metrics.{key} is {value!r}; the importer needs each model's "
                        "train_acc and test_acc as numbers in [0, 1]")
    return float(value)


def read_task(task_dir: Path) -> List[ModelSpec]:
    """Every model of a task from ``model_configs.json`` and each ``model_<id>/config.json``,
    in model-id order; nothing is loaded.

    Raises:
        TaskError: a missing or malformed file, a model without metrics or hyperparameters, a
            hyperparameter named as a param the step logs itself; the message names the model
            and the file.
    """
    task_dir = Path(task_dir)
    if not task_dir.is_dir():
        raise TaskError(f"task directory {task_dir} not found: give -P task=DIR, a task folder "
                        f"of PGDL's public data (with {TASK_FILE}, model_<id>/ and dataset_1/)")
    configs_path = task_dir / TASK_FILE
    configs = _read_json(configs_path, "the task")
    if not isinstance(configs, dict) or not configs:
        raise TaskError(f"{configs_path}: expected an object mapping model ids to "
                        "{hparams, metrics}")
    apart = _metrics_file(task_dir)
    reference = _read_json(apart, "the task's metrics") if apart else {}
    specs = []
    for model_id in sorted(configs, key=_natural):
        entry = configs[model_id]
        where = f"model {model_id}: {configs_path}"
        if not isinstance(entry, dict) or not isinstance(entry.get("hparams"), dict):
            raise TaskError(f"{where}: no 'hparams' object (name -> {{current_value, "
                            "possible_values}})")
        hparams = {}
        for name, h in entry["hparams"].items():
            if not isinstance(h, dict) or "current_value" not in h:
                raise TaskError(f"{where}: hyperparameter {name!r} has no current_value")
            if name in RESERVED or name in declared("pgdl"):
                raise TaskError(f"{where}: hyperparameter {name!r} has the name of a param the "
                                "importer logs itself; rename it in the file")
            hparams[name] = h["current_value"]
        metrics = entry.get("metrics")
        metrics_where = where
        if not isinstance(metrics, dict) and isinstance(reference.get(model_id), dict):
            metrics = reference[model_id].get("metrics")
            metrics_where = f"model {model_id}: {apart}"
        train_acc = _accuracy(metrics, "train_acc", metrics_where)
        test_acc = _accuracy(metrics, "test_acc", metrics_where)
        folder = task_dir / (model_id if model_id.startswith("model_") else f"model_{model_id}")
        config_path = folder / CONFIG
        config = _read_json(config_path, f"model {model_id}")
        layers = config.get("model_config") if isinstance(config, dict) else None
        shape = config.get("input_shape") if isinstance(config, dict) else None
        if not isinstance(layers, list) or not layers or not all(
                isinstance(d, dict) and isinstance(d.get("layer_name"), str) for d in layers):
            raise TaskError(f"model {model_id}: {config_path}: 'model_config' must be a list of "
                            "layer objects, each with a 'layer_name' (a Keras layer class)")
        if not isinstance(shape, list) or not shape or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1
                and float(v).is_integer() for v in shape):
            raise TaskError(f"model {model_id}: {config_path}: 'input_shape' must be a list of "
                            f"positive integers (e.g. [32, 32, 3]), got {shape!r}")
        if not (folder / WEIGHTS).is_file():
            raise TaskError(f"model {model_id}: {folder / WEIGHTS} not found (each model folder "
                            f"needs its trained weights {WEIGHTS})")
        specs.append(ModelSpec(model_id, folder, hparams, train_acc, test_acc, layers,
                               tuple(int(v) for v in shape)))
    return specs


def _integers(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Integral floats as ints (JSON writers turn 3 into 3.0; Keras wants ints), as the
    starting kit's loader does."""
    return {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in kwargs.items()}


def build_model(spec: ModelSpec):
    """The Keras model of ``config.json``: its layers in order after an Input of
    ``input_shape`` (a Sequential, as the starting kit builds it).

    Raises:
        TaskError: a layer class Keras lacks, arguments it rejects, shapes that do not chain.
    """
    import keras

    where = f"{spec.label}: {spec.folder / CONFIG}"
    layers = []
    for i, d in enumerate(spec.layers):
        name = d["layer_name"]
        cls = getattr(keras.layers, name, None)
        if not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)):
            raise TaskError(f"{where}: layer {i} is {name!r}, and Keras {keras.__version__} has "
                            "no layer class of that name (keras.layers.<name>)")
        kwargs = _integers({k: v for k, v in d.items() if k != "layer_name"})
        try:
            layers.append(cls(**kwargs))
        except Exception as e:
            raise TaskError(f"{where}: layer {i} {name}({kwargs}): {type(e).__name__}: {e}"
                            ) from None
    try:
        return keras.Sequential([keras.Input(shape=spec.input_shape)] + layers,
                                name=f"pgdl_model_{spec.model_id}")
    except Exception as e:
        raise TaskError(f"{where}: the layers do not chain on input_shape {spec.input_shape}: "
                        f"{type(e).__name__}: {e}") from None


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def read_hdf5_weights(path: Path) -> List[Tuple[str, List[Tuple[str, Any]]]]:
    """The weights of a Keras 2 HDF5 file: ``[(layer name, [(weight name, array), ...])]`` for
    every layer that has weights, in the file's layer order.

    The layout (``save_weights`` of Keras 2, or ``model_weights`` of a whole saved model): the
    root's attribute ``layer_names``; per layer a group with attribute ``weight_names``, each a
    path to its dataset inside the group.

    Raises:
        TaskError: not an HDF5 file, or not that layout.
    """
    import h5py
    import numpy as np

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise TaskError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        root = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise TaskError(f"{path}: not Keras 2 HDF5 weights (no 'layer_names' attribute at "
                            f"its root; top-level keys {sorted(f.keys())})")
        out = []
        for layer in (_text(n) for n in root.attrs["layer_names"]):
            try:
                group = root[layer]
                names = [_text(n) for n in group.attrs.get("weight_names", [])]
                arrays = [np.asarray(group[n]) for n in names]
            except KeyError as e:
                raise TaskError(f"{path}: layer {layer!r} is listed in layer_names but its "
                                f"weights are missing ({e})") from None
            if names:
                out.append((layer, list(zip(names, arrays))))
    return out


def assign_hdf5_weights(model, path: Path, label: str) -> None:
    """Assigns a Keras 2 HDF5 weight file to the model, layer by layer in order (as Keras 2's
    ``load_weights`` matched them): the file's layers with weights to the model's layers with
    weights, each layer's weights in Keras 2's order (trainable, then non-trainable).

    Raises:
        TaskError: a different number of layers with weights, or of weights in a layer, or a
            shape that differs; the message names the model, the file and the layer.
    """
    saved = read_hdf5_weights(path)
    layers = [layer for layer in model.layers if layer.weights]
    if len(saved) != len(layers):
        raise TaskError(
            f"{label}: {path} has weights for {len(saved)} layers ({[n for n, _ in saved]}), "
            f"the model config.json builds has {len(layers)} layers with weights "
            f"({[layer.name for layer in layers]}): weights and config do not fit")
    for layer, (name, weights) in zip(layers, saved):
        targets = list(layer.trainable_weights) + list(layer.non_trainable_weights)
        want = [tuple(v.shape) for v in targets]
        got = [tuple(a.shape) for _, a in weights]
        if want != got:
            raise TaskError(f"{label}: {path}: layer {name!r} holds weights of shapes {got}, "
                            f"layer {layer.name!r} ({type(layer).__name__}) of the model "
                            f"config.json builds needs {want}: weights and config do not fit")
        for variable, (_, array) in zip(targets, weights):
            variable.assign(array.astype(variable.dtype))


def load_pgdl_model(spec: ModelSpec, initial: bool = False):
    """The model of ``config.json`` with its trained weights (``initial``: its initial ones)."""
    model = build_model(spec)
    assign_hdf5_weights(model, spec.initial if initial else spec.weights, spec.label)
    return model


def measure(model, ds, initial: Optional[Dict[str, Any]], max_samples: int = MAX_SAMPLES,
            seed: int = 0) -> Dict[str, float]:
    """The measures that need no test data, on a seeded subset of the training set (inference
    mode): ``cna_train`` (alpha over ``ds.value_range``), ``margin`` (SPEC §1), the baselines of
    SPEC §2 and §8 (`cna_tf.baselines.compute`, with the initial weights and m = the whole
    training set), and ``measured_train_acc`` (on the subset: a check of the import)."""
    import numpy as np

    import cna_tf
    from cna_tf import baselines, evaluation

    idx = evaluation.subsample(len(ds.x_train), max_samples, seed)
    probe = cna_tf.ActivationProbe(model)
    d = evaluation.measure_split(probe, ds.x_train[idx], ds.y_train[idx],
                                 preprocess=ds.preprocess, value_range=ds.value_range)
    out = {"cna_train": cna_tf.cna(d["alpha"], d["beta"]),
           "margin": float(np.percentile(d["margins"], 5)),
           "measured_train_acc": float(np.mean(d["correct"]))}
    out.update(baselines.compute(model, out["margin"], initial_weights=initial,
                                 train_size=len(ds.x_train)))
    return out


def experiment_name(given: str, task_name: str) -> str:
    """The experiment the step imports into: the one given, else the one ``mlflow run
    --experiment-name`` started it in (`experiment.launched_in`, the lookup every step shares),
    else ``pgdl-<task>``."""
    from experiment import launched_in

    if given:
        return given
    launched = launched_in()
    return launched.name if launched is not None else f"pgdl-{task_name}"


def _quoted(value: Any) -> str:
    """A param value as ``mlflow run`` logs one (shell-quoted), so `params.read_params` reads
    it back: JSON for numbers, lists and booleans, strings as they are."""
    text = value if isinstance(value, str) else json.dumps(value)
    return shlex.quote(cli_value(text))


def check_task(task_dir: Path) -> Tuple[List[ModelSpec], Any]:
    """Reads and checks every model and the data before anything is imported.

    Returns:
        ``(specs, dataset)``: the models and the task's training data
        (`cna_tf.data.PreprocessedDataset`, its classes the models' output width).

    Raises:
        TaskError: the first problem found, naming the model and the file.
    """
    import keras

    import cna_tf
    from cna_tf.data import pgdl as pgdl_data

    specs = read_task(task_dir)
    widths = {}
    for spec in specs:
        model = build_model(spec)
        assign_hdf5_weights(model, spec.weights, spec.label)
        if spec.initial is not None:
            assign_hdf5_weights(model, spec.initial, spec.label)
        widths[spec.model_id] = int(model.output_shape[-1])
        keras.backend.clear_session(free_memory=False)
    if len(set(widths.values())) > 1:
        raise TaskError(f"{task_dir}: the models' outputs differ in width ({widths}): one task "
                        "has one set of classes")
    shards = pgdl_data.shards(str(task_dir))
    where = f"{task_dir}/{pgdl_data.DATA_FOLDER}/train"
    try:
        ds = cna_tf.data.load(f"{PGDL_PREFIX}{task_dir}",
                              num_classes=next(iter(widths.values())))
    except Exception as e:
        raise TaskError(f"the task's data ({where}, {len(shards)} shard(s)): {e}") from None
    for spec in specs:
        if spec.input_shape != ds.input_shape:
            raise TaskError(f"{spec.label}: {spec.folder / CONFIG}: input_shape "
                            f"{list(spec.input_shape)} but the data in {where} has inputs of "
                            f"shape {list(ds.input_shape)}")
    return specs, ds


def _existing(client, experiment_id: str, task_name: str) -> Dict[str, Any]:
    """The runs of this task already in the experiment, by model id."""
    runs = client.search_runs([experiment_id], f"tags.`{TASK_TAG}` = '{task_name}'",
                              max_results=50_000)
    return {r.data.tags.get(MODEL_TAG): r for r in runs}


def import_model(client, experiment_id: str, spec: ModelSpec, ds, task_dir: Path,
                 workdir: Path) -> Dict[str, Any]:
    """One model as one FINISHED run; returns its summary row. A failure deletes the run."""
    import keras
    from mlflow.entities import Metric, Param, RunTag

    from cna_tf import baselines
    from train import save_weights

    task_name = task_dir.name
    initial = None
    if spec.initial is not None:
        model = load_pgdl_model(spec, initial=True)
        initial = baselines.capture_initial_weights(model)
    model = load_pgdl_model(spec)
    error = ""
    try:
        values = measure(model, ds, initial)
    except Exception as e:  # the import still holds: score can measure the model later
        values, error = {}, f"{type(e).__name__}: {e}"[:5000]
        print(f"warning: {spec.label}: the import's measures failed: {error}", file=sys.stderr,
              flush=True)
    values.update(train_acc=spec.train_acc, test_acc=spec.test_acc,
                  gen_gap=spec.train_acc - spec.test_acc)
    options = {"num_classes": ds.num_classes, "value_range": list(ds.value_range)}
    tags = {TAG + "role": "train", TAG + "source": "pgdl", TASK_TAG: task_name,
            MODEL_TAG: spec.model_id, TAG + "pgdl_dir": str(task_dir),
            HPARAMS_TAG: json.dumps(list(spec.hparams)), TAG + "snapshots": "0",
            TAG + "final_only": "true", TAG + "n_train": str(len(ds.x_train)),
            TAG + "num_classes": str(ds.num_classes), TAG + "params": str(model.count_params()),
            TAG + "value_range": json.dumps(list(ds.value_range)),
            TAG + "initial_weights": "true" if initial is not None else "false",
            "arch": f"pgdl-{task_name}", "dataset": f"{PGDL_PREFIX}{task_dir}"}
    if error:
        tags[TAG + "measure_error"] = error
    params = {**{k: _quoted(v) for k, v in spec.hparams.items()},
              "dataset": _quoted(f"{PGDL_PREFIX}{task_dir}"),
              "data_options": _quoted(json.dumps(options, sort_keys=True,
                                                 separators=(",", ":")))}
    run = client.create_run(experiment_id, run_name=f"{task_name} model_{spec.model_id}",
                            tags={TAG + "role": "importing"})
    rid = run.info.run_id
    try:
        now = int(time.time() * 1000)
        client.log_batch(rid, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()
                                       if v is not None and not math.isnan(float(v))],
                         params=[Param(k, v) for k, v in params.items()],
                         tags=[RunTag(k, v) for k, v in tags.items()])
        folder = workdir / spec.model_id
        folder.mkdir()
        model.save(folder / "model.keras")
        client.log_artifact(rid, str(folder / "model.keras"), MODEL_ARTIFACT_DIR)
        if initial is not None:
            save_weights(folder / INITIAL_ARTIFACT, initial)
            client.log_artifact(rid, str(folder / INITIAL_ARTIFACT), MODEL_ARTIFACT_DIR)
        client.set_terminated(rid, "FINISHED")
    except BaseException:
        client.delete_run(rid)  # nothing half-way: the next import makes it again
        raise
    finally:
        keras.backend.clear_session(free_memory=False)
    return {"model": spec.model_id, "run_id": rid, "status": "imported", **values}


def import_task(task_dir: str, experiment: str = "", client=None) -> List[Dict[str, Any]]:
    """Imports every model of a task not yet in the experiment; returns one row per model.

    Raises:
        TaskError: a malformed task (nothing is imported).
    """
    import mlflow

    client = client or mlflow.MlflowClient()
    task = Path(task_dir).expanduser().resolve()
    specs, ds = check_task(task)
    name = experiment_name(experiment, task.name)
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
    existing = _existing(client, exp_id, task.name)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cna_tf_pgdl_") as d:
        for spec in specs:
            old = existing.get(spec.model_id)
            if old is not None and old.info.status == "FINISHED":
                rows.append({"model": spec.model_id, "run_id": old.info.run_id,
                             "status": "skipped"})
            else:
                if old is not None:  # left unfinished by a killed import
                    client.delete_run(old.info.run_id)
                rows.append(import_model(client, exp_id, spec, ds, task, Path(d)))
            row = rows[-1]
            text = f"gen_gap={spec.train_acc - spec.test_acc:.4f}"
            if row["status"] == "skipped":
                text = "already imported"
            elif "measured_train_acc" in row:
                text += (f", train acc measured {row['measured_train_acc']:.4f} (PGDL's "
                         f"{spec.train_acc:.4f})")
            print(f"{row['status']:8s} {spec.label} ({row['run_id'][:8]}): "
                  f"{', '.join(f'{k}={v}' for k, v in spec.hparams.items())}: {text}",
                  flush=True)
    for row in rows:
        row["experiment"] = name
    return rows


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="", help="a PGDL task directory (model_configs.json, "
                    "model_<id>/, dataset_1/)")
    ap.add_argument("--experiment", default="", help="experiment to import into (default: "
                    "the one `mlflow run --experiment-name` gives, else pgdl-<task dir name>)")
    return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    import mlflow

    args = parse_args(argv)
    if not args.task.strip():
        sys.exit("pgdl: no task given: -P task=DIR, a task folder of PGDL's public data, e.g. "
                 "~/pgdl/public_data/input_data/task1_v4")
    t0 = time.perf_counter()
    try:
        rows = import_task(args.task, args.experiment)
    except TaskError as e:
        sys.exit(f"pgdl: {e}\nNothing was imported.")
    name = rows[0]["experiment"]
    imported = sum(r["status"] == "imported" for r in rows)
    total = (f"{imported} imported, {len(rows) - imported} skipped (already imported) of the "
             f"{len(rows)} models of {Path(args.task).expanduser().resolve().name} into "
             f"experiment {name!r} in {time.perf_counter() - t0:.1f} s")
    if not os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run` the run already exists
        mlflow.set_experiment(name)
    with mlflow.start_run() as run:
        mlflow.set_tags({TAG + "role": "pgdl", "mlflow.runName": f"pgdl-{Path(args.task).name}",
                         "mlflow.note.content": total})
        log_launch("pgdl", {k: getattr(args, k) for k in declared("pgdl")})
        log_resolved({"task": str(Path(args.task).expanduser().resolve()), "experiment": name})
        mlflow.log_metrics({"models_imported": imported,
                            "models_skipped": len(rows) - imported})
    print(f"\n{total} (run {run.info.run_id})\nrank every measure over the task's "
          f"hyperparameters: mlflow run . --env-manager local -e compare --experiment-name "
          f"{name} -P all_runs=true", flush=True)
    return rows


if __name__ == "__main__":
    main()
