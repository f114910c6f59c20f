"""Issue 19 item 3 without MLflow: the `mnist_hparams` grid's final snapshots, one JSON.

For every cell of ``configs/mnist_hparams.yaml`` (expanded by `pipelines/cells.load_config`)
this does what ``pipelines/train.py`` does for the final snapshot, without MLflow:

* ``keras.utils.set_random_seed(seed)``, ``cna_tf.data.load(dataset, seed=seed)``,
  ``cna_tf.models.build("mlp", ..., width, depth, seed)``, SGD(lr, momentum),
  sparse categorical cross-entropy; initial weights captured before training;
* ``model.fit`` on the preprocessed training images (shuffled, ``batch_size``) for at most
  ``epochs`` epochs with train.py's own ``FailOnNaN`` and ``StopAtLoss(stop_loss)`` callbacks
  (imported from ``pipelines/train.py``, which imports no MLflow at import time);
* ``cna_tf.evaluate`` on the full training and test sets (train.py's full snapshot with
  ``full_max_samples`` 0 = all points), ``initial_weights`` given, seed = the cell's seed;
* ``cna_tf.flatness.search`` on the preprocessed training set (5,000-point subset, seeded),
  as train.py's ``log_flatness``.

One deviation from train.py: train.py's final ``cna_train`` / ``cna_test`` come from the
callback's fixed per-epoch subset (``max_samples`` = 2,000 per split); here they are
`cna_tf.evaluate`'s, over every point (the other metrics are computed on all points in both).

The JSON (``--out``) holds, per cell, its parameters, epochs trained, why training stopped,
wall times, every value `cna_tf.evaluate` returns and the flatness values; plus the versions,
the Keras backend, the device and the total wall time. It is rewritten after every cell (and,
with ``--workers``, every few seconds), so a run cut short still leaves the cells it finished.
NaN is written as null.

    python experiments/mnist_hparams.py --out /tmp/mnist_hparams.json             # 16 cells
    python experiments/mnist_hparams.py --max-cells 2 --max-epochs 1 \\
        --n-train 1000 --n-test 300 --flatness-samples 500 --out /tmp/smoke.json  # smoke run

``--workers N`` trains the cells in N processes at once (one GPU shared; each cell is
independent and seeded, so this changes no cell's protocol). ``--deadline-s S`` stops any
training still running S seconds after the start (the cell is then measured at the epoch it
reached and marked ``stopped_by: deadline``): a guard for a fixed time budget, reported per cell.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "pipelines"))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="mnist_hparams", help="grid config name or YAML path")
    ap.add_argument("--out", default="mnist_hparams.json", help="the JSON to write")
    ap.add_argument("--max-cells", type=int, default=0, help="first N cells only (0: all)")
    ap.add_argument("--max-epochs", type=int, default=0,
                    help="cap on the config's epochs (0: the config's own maximum)")
    ap.add_argument("--n-train", type=int, default=0, help="stratified training subsample (0: all)")
    ap.add_argument("--n-test", type=int, default=0, help="stratified test subsample (0: all)")
    ap.add_argument("--flatness-samples", type=int, default=5000,
                    help="training subset of the flatness searches (SPEC §8: 5,000)")
    ap.add_argument("--workers", type=int, default=1, help="cells trained at once (processes)")
    ap.add_argument("--deadline-s", type=float, default=0.0,
                    help="stop any training this many seconds after the start (0: none)")
    ap.add_argument("--cells", default="", help=argparse.SUPPRESS)       # worker: cell indices
    ap.add_argument("--deadline-at", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--worker-tag", default="", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def log(msg: str, tag: str = "") -> None:
    print(f"[{time.strftime('%H:%M:%S')}]{(' ' + tag) if tag else ''} {msg}", flush=True)


def clean(v: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {str(k): clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        try:
            v = v.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_json(path: Path, payload: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(clean(payload), indent=1, allow_nan=False))
    os.replace(tmp, path)


def environment() -> Dict[str, Any]:
    import keras
    import numpy as np

    env: Dict[str, Any] = {"python": platform.python_version(), "keras": keras.__version__,
                           "numpy": np.__version__, "backend": keras.backend.backend(),
                           "host": platform.node()}
    try:
        import jax
        env["jax"] = jax.__version__
        env["jax_devices"] = [f"{d.platform}:{getattr(d, 'device_kind', '')}" for d in jax.devices()]
    except Exception as e:  # noqa: BLE001 - only a description
        env["jax"] = f"unavailable ({type(e).__name__})"
    if env["backend"] == "tensorflow":
        import tensorflow as tf
        env["tensorflow"] = tf.__version__
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20)
        env["gpu"] = smi.stdout.strip() or None
    except Exception:  # noqa: BLE001
        env["gpu"] = None
    return env


def load_cells(args) -> List[Dict[str, Any]]:
    from cells import load_config

    _, cells = load_config(args.config)
    if args.max_cells:
        cells = cells[:args.max_cells]
    return cells


# -- one cell ------------------------------------------------------------------------------

def run_cell(index: int, p: Dict[str, Any], args, deadline_at: float, tag: str) -> Dict[str, Any]:
    import keras
    import numpy as np

    import cna_tf
    from cells import cell_key
    from cna_tf import flatness
    from train import FailOnNaN, StopAtLoss  # pipelines/train.py: no MLflow at import time

    class Deadline(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.hit = False

        def on_epoch_end(self, epoch, logs=None):
            if deadline_at and time.time() >= deadline_at:
                self.hit = True
                self.model.stop_training = True

    class EpochLine(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.t0 = time.time()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            if epoch == 0 or (epoch + 1) % 10 == 0:
                log(f"cell {index} epoch {epoch + 1}: loss={logs.get('loss', math.nan):.4f} "
                    f"acc={logs.get('accuracy', math.nan):.4f} ({time.time() - self.t0:.0f}s)",
                    tag)

    epochs = min(p["epochs"], args.max_epochs) if args.max_epochs else p["epochs"]
    hp = {k: p[k] for k in ("arch", "dataset", "depth", "width", "lr", "batch_size", "momentum",
                            "seed", "epochs", "stop_loss")}
    rec: Dict[str, Any] = {"index": index, "cell_key": cell_key(p), "hparams": hp,
                           "max_epochs_run": epochs, "status": "running"}
    t_cell = time.time()
    try:
        keras.utils.set_random_seed(p["seed"])
        ds = cna_tf.data.load(p["dataset"], n_train=args.n_train or None,
                              n_test=args.n_test or None, label_shuffle=p["label_shuffle"],
                              seed=p["seed"])
        model = cna_tf.models.build(p["arch"], ds.input_shape, ds.num_classes,
                                    width=p["width"], seed=p["seed"], depth=p["depth"])
        model.compile(optimizer=keras.optimizers.SGD(p["lr"], momentum=p["momentum"]),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        rec["params"] = int(model.count_params())
        rec["n_train"], rec["n_test"] = int(len(ds.x_train)), int(len(ds.x_test))
        initial = cna_tf.baselines.capture_initial_weights(model)
        x = ds.preprocess(ds.x_train)
        stop, dl = StopAtLoss(p["stop_loss"]) if p["stop_loss"] > 0 else None, Deadline()
        callbacks = [FailOnNaN()] + ([stop] if stop else []) + [dl, EpochLine()]
        log(f"cell {index} start: depth={p['depth']} width={p['width']} lr={p['lr']} "
            f"batch={p['batch_size']} max_epochs={epochs} params={rec['params']}", tag)
        t0 = time.time()
        hist = model.fit(x, ds.y_train, batch_size=p["batch_size"], epochs=epochs, shuffle=True,
                         verbose=0, callbacks=callbacks)
        rec["train_seconds"] = time.time() - t0
        losses = [float(v) for v in hist.history.get("loss", [])]
        rec["epochs_trained"] = len(losses)
        rec["final_train_loss_keras"] = losses[-1] if losses else math.nan
        rec["final_train_acc_keras"] = float(hist.history["accuracy"][-1]) if losses else math.nan
        rec["loss_history"] = losses
        if stop is not None and stop.stopped_epoch is not None:
            rec["stopped_by"] = "stop_loss"
        elif dl.hit:
            rec["stopped_by"] = "deadline"
        else:
            rec["stopped_by"] = "max_epochs"
        log(f"cell {index} trained {len(losses)} epochs in {rec['train_seconds']:.0f}s, "
            f"loss {rec['final_train_loss_keras']:.4f}, stopped by {rec['stopped_by']}", tag)

        t0 = time.time()
        m = cna_tf.evaluate(model, (ds.x_train, ds.y_train), (ds.x_test, ds.y_test),
                            preprocess=ds.preprocess, value_range=ds.value_range,
                            initial_weights=initial,
                            max_samples=p["full_max_samples"] or None, seed=p["seed"])
        rec["evaluate_seconds"] = time.time() - t0
        rec["metrics"] = {k: float(v) for k, v in m.items()}

        if p["flatness"]:
            t0 = time.time()
            fl: Dict[str, Any] = {}
            for name, r in flatness.search(model, x, ds.y_train, samples=args.flatness_samples,
                                           seed=p["seed"]).items():
                fl[name] = float(r.flatness)
                fl[r.parameter] = float(r.value)
                fl[f"{name}_seconds"] = float(r.seconds)
                fl[f"{name}_converged"] = bool(r.converged)
                fl[f"{name}_steps"] = len(r.steps)
                fl[f"{name}_subset_accuracy"] = float(r.accuracy)
                fl["flatness_samples"] = int(r.samples)
            fl["flatness_seconds"] = time.time() - t0
            rec["flatness"] = fl
        rec["status"] = "finished"
        shown = {k: rec["metrics"].get(k) for k in ("train_acc", "test_acc", "gen_gap",
                                                    "cna_margin")}
        log(f"cell {index} done in {time.time() - t_cell:.0f}s: "
            + ", ".join(f"{k}={v:.4g}" for k, v in shown.items())
            + (", " + ", ".join(f"{k}={rec['flatness'][k]:.4g}" for k in flatness.MEASURES)
               if "flatness" in rec else ""), tag)
    except Exception as e:  # a failed cell is recorded, the grid goes on
        import traceback
        rec["status"] = "failed"
        rec["error"] = f"{type(e).__name__}: {e}"
        rec["traceback"] = traceback.format_exc(limit=8)
        log(f"cell {index} FAILED: {rec['error']}", tag)
    rec["cell_seconds"] = time.time() - t_cell
    return rec


def run_cells(indices: List[int], cells, args, deadline_at: float, out: Path, tag: str,
              header: Dict[str, Any]) -> List[Dict[str, Any]]:
    results: List[Dict[str, Any]] = []
    for i in indices:
        results.append(run_cell(i, cells[i], args, deadline_at, tag))
        write_json(out, {**header, "cells": results})
    return results


# -- the whole grid ------------------------------------------------------------------------

def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    if args.cells:  # a worker process
        cells = load_cells(args)
        indices = [int(i) for i in args.cells.split(",") if i]
        run_cells(indices, cells, args, args.deadline_at, out, args.worker_tag, {})
        return

    t_start = time.time()
    deadline_at = t_start + args.deadline_s if args.deadline_s else 0.0
    cells = load_cells(args)
    env = environment()
    header = {"experiment": "issue 19 item 3: mnist_hparams final snapshots",
              "config": args.config, "argv": sys.argv[1:], "environment": env,
              "options": {"max_cells": args.max_cells, "max_epochs": args.max_epochs,
                          "n_train": args.n_train, "n_test": args.n_test,
                          "flatness_samples": args.flatness_samples, "workers": args.workers,
                          "deadline_s": args.deadline_s},
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t_start))}
    log(f"{len(cells)} cells, backend {env['backend']}, keras {env['keras']}, "
        f"jax {env.get('jax')}, gpu {env.get('gpu')}, workers {args.workers}")

    def payload(results, done: bool) -> Dict[str, Any]:
        results = sorted(results, key=lambda r: r["index"])
        return {**header, "complete": done and len(results) == len(cells)
                and all(r["status"] == "finished" for r in results),
                "cells_expected": len(cells), "total_wall_seconds": time.time() - t_start,
                "cells": results}

    if args.workers <= 1:
        results: List[Dict[str, Any]] = []
        for i in range(len(cells)):
            results.append(run_cell(i, cells[i], args, deadline_at, ""))
            write_json(out, payload(results, False))
        write_json(out, payload(results, True))
    else:
        n = min(args.workers, len(cells))
        # batch size decides a cell's cost most: deal the cells round-robin in that order
        order = sorted(range(len(cells)), key=lambda i: (cells[i]["batch_size"], i))
        shares = [order[k::n] for k in range(n)]
        parts_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"mnist_hparams_parts_{os.getpid()}"
        parts_dir.mkdir(parents=True, exist_ok=True)
        procs = []
        passthrough = ["--config", args.config, "--max-cells", str(args.max_cells),
                       "--max-epochs", str(args.max_epochs), "--n-train", str(args.n_train),
                       "--n-test", str(args.n_test),
                       "--flatness-samples", str(args.flatness_samples)]
        for k, share in enumerate(shares):
            cmd = [sys.executable, str(Path(__file__).resolve()), *passthrough,
                   "--cells", ",".join(map(str, share)), "--deadline-at", repr(deadline_at),
                   "--worker-tag", f"w{k}", "--out", str(parts_dir / f"part{k}.json")]
            procs.append(subprocess.Popen(cmd))

        def collect() -> List[Dict[str, Any]]:
            got: List[Dict[str, Any]] = []
            for k in range(n):
                f = parts_dir / f"part{k}.json"
                if f.exists():
                    try:
                        got += json.loads(f.read_text()).get("cells", [])
                    except json.JSONDecodeError:
                        pass
            return got

        last = 0
        while any(pr.poll() is None for pr in procs):
            time.sleep(2)
            if time.time() - last > 10:
                write_json(out, payload(collect(), False))
                last = time.time()
        for k, pr in enumerate(procs):
            if pr.returncode:
                log(f"worker w{k} exited with {pr.returncode}")
        results = collect()
        write_json(out, payload(results, True))
    final = json.loads(out.read_text())
    log(f"wrote {out}: {len(final['cells'])}/{len(cells)} cells, complete={final['complete']}, "
        f"total {final['total_wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()
