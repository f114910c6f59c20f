"""MLproject step `train`: one network of the grid, measured while it trains.

Logs the parameters, tags (arch, dataset, cell key), the per-epoch CNA series and the training
loss, and the full SPEC §3 metric set at every snapshot (epoch 0, every ``snapshot_every``
epochs, the final epoch) through `cna_tf.CNACallback`; the model only with ``save_model``.

A run killed mid-training resumes from its last completed epoch when started again with the same
MLflow run id and backup directory (`keras.callbacks.BackupAndRestore`).

    python pipelines/train.py --arch mlp --dataset digits --epochs 10 --batch_size 64
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402

import backup as backup_store  # noqa: E402
from cells import ALL_PARAMS, cell_key, normalize  # noqa: E402
from params import log_launch, log_resolved  # noqa: E402

from cna_tf import flatness, optimization, suite  # noqa: E402
from cna_tf.tracking import TAG_PREFIX as TAG, metric_histories  # noqa: E402

BACKUP_ROOT = Path(os.environ.get("CNA_TF_BACKUP_DIR", ".cna_backup"))
#: the file in a cell's backup that says stop_loss ended its training (`StopAtLoss`)
STOP_RECORD = "stopped_at_loss.json"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, (typ, default, text) in ALL_PARAMS.items():
        ap.add_argument(f"--{name}", default=default, help=f"{text} (default: {default!r})")
    ap.add_argument("--parent_run_id", default="", help="grid run to attach to as a child")
    ap.add_argument("--cell_key", default="", help="expected cell key (checked)")
    ap.add_argument("--backup_dir", default="",
                    help=f"resume state (default: {BACKUP_ROOT}/<cell key>)")
    return ap.parse_args(argv)


class FailOnNaN(keras.callbacks.Callback):
    """Raises on a NaN/inf training loss, so the run ends FAILED with the reason."""

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise FloatingPointError(
                f"training loss became {float(loss)} at epoch {self.epoch + 1}, batch "
                f"{batch + 1}: lower the learning rate or check the inputs")


# The training cross-entropy metric compiled beside `loss` when weight decay adds a penalty.
CROSS_ENTROPY = optimization.CROSS_ENTROPY


class StopAtLoss(keras.callbacks.Callback):
    """Jiang et al. 2020's stopping rule: stop once an epoch's training cross-entropy (the
    ``loss`` Keras reports for the epoch, the mean over its batches) is <= ``threshold``.

    With weight decay, Keras' ``loss`` includes the L2 penalty; the rule then reads the
    ``cross_entropy`` metric (the cross-entropy alone) that `train` compiles for that case.
    `cna_tf.CNACallback` measures the final snapshot at the epoch training stopped.

    ``record``: a file (in the cell's backup) that keeps the epoch it stopped at, written before
    that epoch's backup: a run killed after training ended (during its final measures) resumes
    at that epoch instead of training on (`stopped_before`).
    """

    def __init__(self, threshold: float, record: Optional[Path] = None):
        super().__init__()
        self.threshold = float(threshold)
        self.record = record
        self.stopped_epoch: Optional[int] = None

    def on_epoch_end(self, epoch, logs=None):
        loss = optimization.epoch_cross_entropy(logs)  # the optimization measures read it too
        if loss is not None and loss <= self.threshold:
            self.model.stop_training = True
            self.stopped_epoch = epoch + 1
            if self.record is not None:
                self.record.write_text(json.dumps({"stopped_epoch": self.stopped_epoch}))

    def stopped_before(self) -> Optional[int]:
        """The epoch the run this backup belongs to stopped at, or None (it had not)."""
        if self.record is None or not self.record.exists():
            return None
        self.stopped_epoch = int(json.loads(self.record.read_text())["stopped_epoch"])
        return self.stopped_epoch


def log_flatness(model, x, y, seed: int, step: int) -> Dict[str, float]:
    """SPEC §8's flatness measures of the trained model, logged at the final snapshot's step.

    Logs the three measures, σ′/α′ (`cna_tf.flatness.compute`'s six values), each search's
    time (``<measure>_seconds``) and the total (``flatness_seconds``); returns them.
    """
    import mlflow

    t0 = time.time()
    values: Dict[str, float] = {}
    for name, r in flatness.search(model, x, y, seed=seed).items():
        values[name] = float(r.flatness)
        values[r.parameter] = float(r.value)
        values[f"{name}_seconds"] = float(r.seconds)
    values["flatness_seconds"] = time.time() - t0
    mlflow.log_metrics(values, step=step)
    print(f"flatness at epoch {step} in {values['flatness_seconds']:.1f}s: "
          + ", ".join(f"{k}={values[k]:.4g}" for k in flatness.MEASURES), flush=True)
    return values


def _nan_tags(reasons: Dict[str, str], step: int) -> Dict[str, str]:
    """``cna_nan.<metric>`` tags (`cna_tf.tracking.nan_reasons`' convention) from per-metric
    reasons."""
    return {f"cna_nan.{k}": f"at epoch {step}: {r}"[:5000] for k, r in reasons.items()}


def log_suite(model, x, y, initial_weights, p: Dict[str, Any], step: int,
              skip: Sequence[str] = ()) -> Dict[str, float]:
    """SPEC §12's post-hoc measures of the trained model (`cna_tf.suite.compute`), logged at the
    final snapshot's step; returns what was logged.

    ``p["suite"]``: ``all`` computes every measure, ``cheap`` all but the searches, plus §8's
    three searches when ``p["flatness"]`` (so no search runs twice). Logs each measure, the
    σ′/α′ of the searches that ran, γ₁₀ (``gamma_10``), the time of each search
    (``<measure>_seconds``), of the cheap part (``suite_cheap_seconds``), the searches'
    total (``flatness_seconds``) and of the whole (``suite_seconds``); a NaN measure gets the
    tag ``cna_nan.<measure>`` with the reason. Names in ``skip`` (logged at every snapshot by
    `cna_tf.CNACallback` already) are not logged again.
    """
    import mlflow

    names = None
    if p["suite"] == "cheap":
        # §8's three searches (`flatness.MEASURES`) when flatness=true: what cheap leaves out
        names = list(suite.CHEAP) + (list(flatness.MEASURES) if p["flatness"] else [])
    t0 = time.time()
    result = suite.compute(model, x, y, initial_weights=initial_weights, names=names,
                           seed=p["seed"], train_size=len(x))
    total = time.time() - t0
    values = {k: float(v) for k, v in result.items() if k not in skip}
    # the σ′ / α′ of the searches that ran, and γ₁₀
    values.update({k: float(result.parameters[k])
                   for k in tuple(flatness.PARAMETERS.values()) + ("gamma_10",)
                   if k in result.parameters})
    searches = {k: float(v) for k, v in result.seconds.items() if k != "cheap"}
    values.update({f"{k}_seconds": v for k, v in searches.items()})
    if searches:
        values["flatness_seconds"] = sum(searches.values())
    if "cheap" in result.seconds:
        values["suite_cheap_seconds"] = float(result.seconds["cheap"])
    values["suite_seconds"] = total
    mlflow.log_metrics(values, step=step)
    tags = _nan_tags({k: r for k, r in result.reasons.items() if k not in skip}, step)
    if tags:
        mlflow.set_tags(tags)
    print(f"suite ({p['suite']}) at epoch {step}: {len(result)} measures in {total:.1f}s"
          + (f" ({len(tags)} NaN: {', '.join(sorted(result.reasons))})" if tags else ""),
          flush=True)
    return values


def log_optimization(model, x, y, cross_entropy: Dict[int, float], p: Dict[str, Any],
                     step: int) -> Dict[str, float]:
    """SPEC §12's optimization-based measures of this training run, logged at the final
    snapshot's step: ``steps_to_ce_0.1``, ``steps_ce_0.1_to_0.01`` (from ``cross_entropy``,
    ``{epoch: the epoch's training cross-entropy}``, s = ceil(n_train / batch_size)) and
    ``grad_noise_final`` (at the final weights, batches of ``batch_size``), with
    ``cna_nan.<metric>`` tags for a threshold not reached; returns them."""
    import mlflow

    steps_per_epoch = math.ceil(len(x) / p["batch_size"])
    values, reasons = optimization.steps_to_thresholds(cross_entropy, steps_per_epoch)
    t0 = time.time()
    values["grad_noise_final"] = optimization.grad_noise(model, x, y, p["batch_size"])
    values["grad_noise_seconds"] = time.time() - t0
    mlflow.log_metrics(values, step=step)
    if reasons:
        mlflow.set_tags(_nan_tags(reasons, step))
    return values


def _cross_entropy_series(recorder, run_id: str, weight_decay: bool) -> Dict[int, float]:
    """Every trained epoch's cross-entropy: the recorder's, and for the epochs a resumed run
    trained before the restart, the values `EpochLogger` logged then (step = epoch)."""
    series = dict(recorder.cross_entropy)
    if 1 not in series:
        key = CROSS_ENTROPY if weight_decay else "loss"
        steps, values = metric_histories(run_id, [key], duplicates="last")[key]
        for e, v in zip(steps, values):
            series.setdefault(int(e), float(v))
    return series


def log_converged(converged: bool, step: int) -> None:
    """Whether training reached ``stop_loss`` before the epoch budget ran out (Jiang et al.'s
    and Dziugaite et al.'s protocols leave out networks that did not): the tag
    ``cna_tf.converged`` (``true``/``false``, what `compare` reads) and the metric
    ``converged`` (1/0, a column of the UI's runs table), at the final snapshot's step."""
    import mlflow

    mlflow.set_tag(TAG + "converged", str(bool(converged)).lower())
    mlflow.log_metric("converged", float(bool(converged)), step=step)


class EpochLogger(keras.callbacks.Callback):
    """Logs Keras' own per-epoch values (loss, accuracy) to MLflow at step = epochs done."""

    def on_epoch_end(self, epoch, logs=None):
        import mlflow

        # Keras' names: `train_loss` / `train_acc` are the callback's un-augmented evaluations
        own = {k: float(v)
               for k, v in (logs or {}).items()
               if k in ("loss", "accuracy", "val_loss", "val_accuracy", CROSS_ENTROPY)}
        if own:
            mlflow.log_metrics(own, step=epoch + 1)


def save_weights(path: Path, weights: Dict[str, Any]) -> None:
    """``{key: array}`` weights as an npz file without pickles (`_load_weights` reads it)."""
    import numpy as np

    np.savez(path, **{f"w{i:04d}": v for i, v in enumerate(weights.values())},
             keys=np.array(list(weights.keys())))


def _load_weights(path: Path) -> Dict[str, Any]:
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        keys = [str(k) for k in z["keys"]]
        return {k: z[f"w{i:04d}"] for i, k in enumerate(keys)}


FIGURES = "figures"


def log_figures(cb, model, p: Dict[str, Any]) -> List[str]:
    """Logs the run's paper figures under ``figures/``; returns the artifact paths logged.

    * ``fig4_loss_and_cna.png``: training loss and CNA (train, test) per epoch, read back from
      the run's metrics (so a resumed run shows all its epochs);
    * ``fig6_error_by_alpha_quintile.png`` and ``quintile_errors.csv``: test error per alpha
      quintile at every full snapshot (`cna_tf.analysis.quintile_error_table`);
    * ``fig1_depth_profile.png``: z_d over depth for the lowest- and highest-alpha test input of
      the full-snapshot test set, at the end of training;
    * ``fig5_trajectory_pca.png``: MLPs with ``trajectory`` on: the weight trajectory over the
      CNA landscape of the per-epoch test subset.

    A figure that fails is skipped with a warning and tag ``cna_tf.figure_error.<name>``; the
    run itself never fails here.
    """
    import csv
    import io
    import traceback
    import warnings

    import mlflow

    from cna_tf import analysis, plots
    run_id = mlflow.active_run().info.run_id
    logged: List[str] = []

    def fig4():
        h = metric_histories(run_id, ["loss", "cna_train", "cna_test"], duplicates="last")
        (e_loss, loss), (e_tr, c_tr), (e_te, c_te) = (h["loss"], h["cna_train"],
                                                     h["cna_test"])
        fig = plots.loss_and_cna(e_loss, loss, c_tr, cna_epochs=e_tr, cna_label="CNA",
                                 title=f"{model.name} on {p['dataset']}: training loss and CNA "
                                       "(Fig. 4)")
        ax, ax2 = fig.axes[0], fig.axes[1]
        ax2.lines[0].set_label("CNA (train)")
        ax2.plot(e_te, c_te, "--s", ms=3, color="tab:cyan", label="CNA (test)")
        handles = ax.lines + ax2.lines
        ax.legend(handles, [ln.get_label() for ln in handles], loc="center right", fontsize=8)
        return fig

    def fig6():
        alpha = cb.snapshot_alpha["test"]
        correct = {e: s["test"] for e, s in cb.snapshots.items()}
        rows = analysis.quintile_error_table(alpha, correct)
        out = io.StringIO()
        w = csv.DictWriter(out, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        mlflow.log_text(out.getvalue(), f"{FIGURES}/quintile_errors.csv")
        logged.append(f"{FIGURES}/quintile_errors.csv")
        return plots.error_by_alpha_quintile(
            alpha, correct, title=f"{model.name} on {p['dataset']}: test error by alpha "
                                  "quintile (Fig. 6)")

    def fig1():
        split = cb.snapshot_samples["test"]  # the full-snapshot test samples (snapshot_alpha)
        sums = cb.probe.layer_sums(split.inputs, batch_size=cb.batch_size)
        return plots.depth_profile(
            **analysis.pick_extremes(cb.snapshot_alpha["test"], sums, images=split.raw),
            layer_names=cb.probe.layer_names,
            title=f"{model.name} on {p['dataset']}, epoch {max(cb.history)}: activation vs "
                  "depth (Fig. 1)")

    def fig5():
        split = cb.epoch_samples["test"]  # the per-epoch CNA subset: the trajectory's cna_test
        return plots.trajectory_landscape(model, cb.trajectory, split.alpha, split.inputs,
                                          title=None)

    figures = [("fig4_loss_and_cna", fig4), ("fig6_error_by_alpha_quintile", fig6),
               ("fig1_depth_profile", fig1)]
    if cb.record_trajectory:
        figures.append(("fig5_trajectory_pca", fig5))
    for name, make in figures:
        fig = None
        try:
            fig = make()
            mlflow.log_figure(fig, f"{FIGURES}/{name}.png")
            logged.append(f"{FIGURES}/{name}.png")
        except Exception as e:  # a figure is never worth a failed run
            warnings.warn(f"figure {name} not logged: {type(e).__name__}: {e}\n"
                          f"{traceback.format_exc(limit=3)}", RuntimeWarning, stacklevel=2)
            try:
                mlflow.set_tag(f"{TAG}figure_error.{name}", f"{type(e).__name__}: {e}"[:5000])
            except Exception:
                pass
        finally:
            if fig is not None:
                plots.close(fig)
    return logged


def load_data(p: Dict[str, Any]):
    """The cell's data exactly as `train` trains on it (`cna_tf.data.load` with its subset,
    seed, shuffled labels and options); `score` rebuilds a run's training set with it.

    Args:
        p: the cell's normalized parameters (`cells.normalize`).
    """
    import cna_tf

    options = json.loads(p["data_options"]) if p["data_options"] else {}
    n_train, n_test = p["n_train"] or None, p["n_test"] or None
    if p["dataset"] == "gaussian":  # generate exactly the asked sizes instead of subsampling
        options.setdefault("train_size", n_train or 50_000)
        options.setdefault("test_size", n_test or 10_000)
        n_train = n_test = None
    return cna_tf.data.load(p["dataset"], n_train=n_train, n_test=n_test,
                            label_shuffle=p["label_shuffle"], seed=p["seed"], **options)


def train(p: Dict[str, Any], parent_run_id: str = "", backup_dir: str = "",
          extra_callbacks: Sequence[keras.callbacks.Callback] = ()) -> Dict[str, float]:
    """Trains one cell inside the active (or a new) MLflow run; returns the final metrics.

    Args:
        p: the cell's normalized parameters (`cells.normalize`).
        parent_run_id: a grid run to attach to as a child.
        backup_dir: the cell's resume state (default ``.cna_backup/<cell key>``).
        extra_callbacks: Keras callbacks run each epoch after the backup is written and before
            the CNA measurement (the tests' fault injection uses this window).
    """
    import mlflow

    import cna_tf

    key = cell_key(p)
    backup = Path(backup_dir) if backup_dir else BACKUP_ROOT / key
    run_id = mlflow.active_run().info.run_id
    foreign = backup_store.owner(backup)
    resumed = backup_store.claim(backup, run_id)
    if not resumed and foreign not in (None, run_id):
        print(f"discarded the backup in {backup}: run {foreign} wrote it, this is run {run_id}",
              flush=True)

    keras.utils.set_random_seed(p["seed"])
    ds = load_data(p)
    augment = {"auto": ds.augment and p["arch"] != "mlp", "true": True, "false": False}[
        p["augment"]]
    kw = {"depth": p["depth"]} if p["arch"] == "mlp" else {}
    if p["weight_decay"]:
        kw["weight_decay"] = p["weight_decay"]
    if p["dropout"]:
        kw["dropout"] = p["dropout"]
    model = cna_tf.models.build(p["arch"], ds.input_shape, ds.num_classes, width=p["width"],
                                seed=p["seed"], **kw)
    metrics: List[Any] = ["accuracy"]
    if p["weight_decay"]:  # Keras' `loss` then includes the penalty; stop_loss reads this one
        metrics.append(keras.metrics.SparseCategoricalCrossentropy(name=CROSS_ENTROPY))
    model.compile(optimizer=keras.optimizers.SGD(p["lr"], momentum=p["momentum"]),
                  loss="sparse_categorical_crossentropy", metrics=metrics)

    tags = {"arch": p["arch"], "dataset": p["dataset"], TAG + "cell_key": key,
            TAG + "role": "train", TAG + "final_only": str(p["final_only"]).lower(),
            TAG + "n_train": str(len(ds.x_train)), TAG + "n_test": str(len(ds.x_test)),
            TAG + "num_classes": str(ds.num_classes), TAG + "augment": str(augment).lower(),
            TAG + "params": str(model.count_params())}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    mlflow.set_tags(tags)
    log_launch("train", p)  # when neither `mlflow run` nor the grid did
    log_resolved(p)

    weights_file = backup / "initial_weights.npz"
    initial = _load_weights(weights_file) if resumed and weights_file.exists() else None
    if initial is None:  # the kernels (bound_2018, dist_init) and BN state (the suite's folding)
        initial = suite.capture_initial_weights(model)
        save_weights(weights_file, initial)
    if resumed:
        meta = json.loads((backup / "training_metadata.json").read_text())
        mlflow.set_tag(TAG + "resumed_from_epoch", str(meta.get("epoch", "?")))
        # the grid tagged the run it stopped (`cna_tf.failure`); running again, that is history
        failure = mlflow.get_run(run_id).data.tags.get(TAG + "failure")
        if failure is not None:
            mlflow.set_tag(TAG + "interrupted", failure)
            mlflow.delete_tag(TAG + "failure")
        print(f"resuming cell {key} from its backup at epoch {meta.get('epoch')}", flush=True)

    cb = cna_tf.CNACallback(
        (ds.x_train, ds.y_train), (ds.x_test, ds.y_test), preprocess=ds.preprocess,
        value_range=ds.value_range, every=1, full_every=p["snapshot_every"],
        max_samples=p["max_samples"], full_max_samples=p["full_max_samples"] or None,
        seed=p["seed"], initial_weights=initial, verbose=1,
        record_trajectory=p["trajectory"] and p["arch"] == "mlp")
    # Order matters: each epoch's backup is written before its CNA metrics are logged, and the
    # callback logs a restored epoch whose metrics a kill kept from MLflow (exactly once).
    callbacks = [FailOnNaN(), EpochLogger(),
                 keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False,
                                                  double_checkpoint=True), cb]
    stop = StopAtLoss(p["stop_loss"], backup / STOP_RECORD) if p["stop_loss"] > 0 else None
    epochs = p["epochs"]
    stopped = stop.stopped_before() if stop is not None and resumed else None
    if stopped is not None:
        # killed after stop_loss ended training: restore that epoch, train no further
        epochs = min(epochs, stopped)
        print(f"training had stopped at epoch {stopped} (stop_loss): no more epochs", flush=True)
    if stop is not None:
        callbacks.insert(2, stop)
    recorder = optimization.CrossEntropyRecorder()
    if p["suite"] != "none":
        callbacks.insert(2, recorder)
    callbacks[-1:-1] = list(extra_callbacks)
    if augment:
        x = ds.pipeline("train", batch_size=p["batch_size"], augment=True, seed=p["seed"])
        fit_kw: Dict[str, Any] = {}
    else:
        x = ds.preprocess(ds.x_train)
        fit_kw = {"y": ds.y_train, "batch_size": p["batch_size"], "shuffle": True}
    try:
        model.fit(x, epochs=epochs, callbacks=callbacks, verbose=2, **fit_kw)
    except Exception as e:
        mlflow.set_tag(TAG + "failure", f"{type(e).__name__}: {e}"[:5000])
        raise
    final = dict(cb.history[max(cb.history)]) if cb.history else {}
    # the final snapshot's epoch; a resume after stop_loss ended training measured no epoch here
    last = max(cb.history) if cb.history else (stop.stopped_epoch if stop is not None else None)
    # a resume that measured no epoch (stop_loss had ended training) keeps what the killed
    # process recorded: its convergence flag, the metrics at its last step
    recorded = None if cb.history else mlflow.get_run(run_id).data
    before = recorded.tags if recorded else {}
    # every full snapshot of the run, a killed process's before a resume included
    snapshots, _ = metric_histories(run_id, "gen_gap")["gen_gap"]
    mlflow.set_tag(TAG + "snapshots", ",".join(str(int(e)) for e in snapshots))
    if stop is not None and stop.stopped_epoch is not None:
        mlflow.set_tag(TAG + "stopped_at_epoch", str(stop.stopped_epoch))
    # without stop_loss there is no criterion to reach: no flag
    if stop is not None and TAG + "converged" not in before:
        log_converged(stop.stopped_epoch is not None, last or 0)
    x_plain = ds.preprocess(ds.x_train) if augment else x  # un-augmented training inputs
    if p["suite"] != "none" and last is not None:  # the suite runs §8's searches itself
        step = last
        # what the callback logged at that step (from the run itself when this process did not
        # measure it: a resume after stop_loss), so that no name gets a second value there
        logged = cb.history[step] if step in cb.history else recorded.metrics
        final.update(log_suite(model, x_plain, ds.y_train, initial, p, step, skip=list(logged)))
        final.update(log_optimization(
            model, x_plain, ds.y_train,
            _cross_entropy_series(recorder, run_id, bool(p["weight_decay"])), p, step))
    elif p["flatness"] and last is not None:
        final.update(log_flatness(model, x_plain, ds.y_train, p["seed"], last))
    if p["save_model"]:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "model.keras"
            model.save(path)
            mlflow.log_artifact(str(path), "model")
    log_figures(cb, model, p)  # never raises: a figure's failure is a warning and a tag
    shutil.rmtree(backup, ignore_errors=True)  # finished: nothing to resume
    return final


def main(argv: Optional[List[str]] = None,
         extra_callbacks: Sequence[keras.callbacks.Callback] = ()) -> None:
    args = parse_args(argv)
    p = normalize({k: getattr(args, k) for k in ALL_PARAMS})
    if args.cell_key and args.cell_key != cell_key(p):
        sys.exit(f"cell key mismatch: expected {args.cell_key}, the parameters give "
                 f"{cell_key(p)}; pass the parameters of the cell unchanged")
    import mlflow

    t0 = time.time()
    # Uses MLFLOW_RUN_ID when the grid (or `mlflow run`) created the run; resumes it if it exists.
    with mlflow.start_run() as run:
        final = train(p, parent_run_id=args.parent_run_id, backup_dir=args.backup_dir,
                      extra_callbacks=extra_callbacks)
        mlflow.log_metric("train_seconds", time.time() - t0)
    shown = {k: final.get(k) for k in ("cna_test", "cna_area", "cna_margin", "gen_gap")}
    print(f"run {run.info.run_id} cell {cell_key(p)} finished in {time.time() - t0:.1f}s: "
          + ", ".join(f"{k}={v:.4g}" for k, v in shown.items() if v is not None), flush=True)


if __name__ == "__main__":
    main()
