"""Probe and callback cost on the active Keras backend (run on a GPU under jax or torch).

Measures, in one process and with interleaved repeats:
  - probe (layer sums + outputs, one compiled pass) / bare model.predict, batch 512, for the
    5x500 MLP on N inputs of 3,072 features and ResNet-18 on M 32x32x3 inputs;
  - the CNACallback's share of a training epoch at defaults (every=1, full_every=20,
    max_samples=2000) for the MLP on 60,000 inputs: (epoch time with callback - without) /
    without, from epoch-to-epoch intervals, plus the cost of one full snapshot.

Run: KERAS_BACKEND=jax python bench/bench_backend.py [--mlp-n 50000 --resnet-n 20000]
Writes bench/results/gpu-<backend>.json (or cpu-<backend>.json) naming the device.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import keras  # noqa: E402

import cna_tf  # noqa: E402
from common import RESULTS, interleaved, machine, median, table  # noqa: E402


def device_name() -> str:
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax
            return str(jax.devices()[0].device_kind)
        if backend == "torch":
            import torch
            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        if backend == "tensorflow":
            import tensorflow as tf
            gpus = tf.config.list_physical_devices("GPU")
            return gpus[0].name if gpus else "cpu"
    except Exception as e:  # noqa: BLE001
        return f"unknown ({e})"
    return "cpu"


def probe_case(name, model, x, batch_size, repeats):
    probe = cna_tf.ActivationProbe(model)
    net = probe.full_model

    def per_batch():  # the two forward paths the probe chooses between, timed apart
        parts = [net.predict_on_batch(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return [np.concatenate([np.asarray(p[j]) for p in parts]) for j in range(2)]

    fns = {"predict": lambda: model.predict(x, batch_size=batch_size, verbose=0),
           "probe": lambda: probe.layer_sums_and_outputs(x, batch_size=batch_size),
           "sums": lambda: probe.layer_sums(x, batch_size=batch_size),
           "path_per_batch": per_batch,
           "path_predict": lambda: net.predict(x, batch_size=batch_size, verbose=0)}
    t = interleaved(fns, repeats=repeats)
    s = {k: median(v) for k, v in t.items()}
    return {"case": name, "n": len(x), "batch_size": batch_size, "seconds": s,
            "all_seconds": t, "ratio_probe_predict": s["probe"] / s["predict"],
            "ratio_sums_predict": s["sums"] / s["predict"],
            "ratio_per_batch_path_predict": s["path_per_batch"] / s["predict"],
            "ratio_predict_path_predict": s["path_predict"] / s["predict"]}


class _EpochClock(keras.callbacks.Callback):
    """Timestamps at each epoch end; listed last, so an interval holds the callbacks' work."""

    def on_train_begin(self, logs=None):
        self.stamps = [time.perf_counter()]

    def on_epoch_end(self, epoch, logs=None):
        self.stamps.append(time.perf_counter())


def callback_case(n, epochs, batch_size, full_every=20):
    """Per-epoch share of CNACallback at defaults, from epoch-to-epoch intervals.

    Epochs 2..E-1 are compared (the first compiles, the last holds the final full snapshot);
    the one-off full snapshot (CNA-A, margin, baselines, accuracy on all data) is timed on its
    own, as it comes once every ``full_every`` epochs.
    """
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    raw_te, y_te = raw[: n // 6], y[: n // 6]
    x = raw.astype("float32") / 255.0
    model = cna_tf.models.build("mlp", (32, 32, 3), 10)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.8), "sparse_categorical_crossentropy")
    pre = lambda r: r.astype("float32") / 255.0  # noqa: E731
    result = {}
    for label, extra in (("plain", []), ("callback", ["cb"]), ("plain2", []),
                         ("callback2", ["cb"])):
        clock = _EpochClock()
        cbs = []
        if extra:
            cb = cna_tf.CNACallback((raw, y), (raw_te, y_te), preprocess=pre, mlflow=False,
                                    log_artifacts=False, full_every=full_every)
            cbs.append(cb)
        model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, callbacks=cbs + [clock])
        result[label] = np.diff(clock.stamps)[1:-1].tolist()
    plain = median(result["plain"] + result["plain2"])
    with_cb = median(result["callback"] + result["callback2"])
    t0 = time.perf_counter()
    cb._measure(epochs, full=True)
    full_s = time.perf_counter() - t0
    return {"n": n, "epochs": epochs, "batch_size": batch_size, "epoch_seconds": result,
            "plain_epoch_s": plain, "callback_epoch_s": with_cb,
            "overhead": (with_cb - plain) / plain, "full_snapshot_s": full_s,
            "full_snapshot_share_per_epoch": full_s / full_every / plain}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mlp-n", type=int, default=50_000)
    ap.add_argument("--resnet-n", type=int, default=20_000)
    ap.add_argument("--cb-n", type=int, default=60_000)
    ap.add_argument("--cb-epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tag", default=None, help="results file prefix (default gpu/cpu)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    info = machine()
    info["device"] = device_name()
    cases = [probe_case("mlp5x500 3072", cna_tf.models.build("mlp", (32, 32, 3), 10),
                        rng.random((args.mlp_n, 32, 32, 3), dtype=np.float32), args.batch_size,
                        args.repeats),
             probe_case("resnet18 32x32x3", cna_tf.models.build("resnet18", (32, 32, 3), 10),
                        rng.random((args.resnet_n, 32, 32, 3), dtype=np.float32),
                        args.batch_size, max(3, args.repeats // 2))]
    cb = callback_case(args.cb_n, args.cb_epochs, args.batch_size)
    rows = [[c["case"], c["n"], c["seconds"]["predict"], c["seconds"]["probe"],
             c["ratio_probe_predict"], c["ratio_sums_predict"],
             c["ratio_per_batch_path_predict"], c["ratio_predict_path_predict"]] for c in cases]
    print(f"backend {info['backend']} on {info['device']}")
    print(table(rows, ["case", "n", "predict s", "probe s", "probe/predict", "sums/predict",
                       "per-batch path/predict", "predict path/predict"]))
    print(f"callback at defaults: {cb['overhead'] * 100:.2f} % of an epoch (plain "
          f"{cb['plain_epoch_s']:.3f} s, with callback {cb['callback_epoch_s']:.3f} s); one full "
          f"snapshot {cb['full_snapshot_s']:.3f} s = {cb['full_snapshot_share_per_epoch'] * 100:.2f}"
          " % per epoch at full_every=20")
    tag = args.tag or ("cpu" if info["device"] == "cpu" else "gpu")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"machine": info, "cases": cases, "callback": cb}
    path = RESULTS / f"{tag}-{info['backend']}.json"
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], path.name), "w") as f:
            f.write(path.read_text())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
