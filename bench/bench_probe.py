"""ActivationProbe vs its floor (model.predict) and vs the usual way (every layer to the host).

Targets (issue "Core"): probe.layer_sums time / model.predict time <= 1.10 on
  - the 5x500 MLP on 10,000 MNIST-shaped inputs,
  - ResNet-18 at 32x32x3 on 2,000 inputs,
same inputs, same batch size, same process, interleaved repeats.

Run: .venv/bin/python bench/bench_probe.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import tracemalloc

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import keras  # noqa: E402

import cna_tf  # noqa: E402
from common import interleaved, machine, median, save, table  # noqa: E402


def usual_way(model, probe):
    """What activation-extraction libraries do: return every probe layer's full output."""
    outs = [layer.output for layer in probe.layers]
    extractor = keras.Model(model.inputs, outs)

    def run(x, batch_size):
        full = extractor.predict(x, batch_size=batch_size, verbose=0)
        return np.stack([a.reshape(len(a), -1).sum(1) for a in full], axis=1)
    return run


def peak_mb(fn) -> float:
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def case(name, model, x, batch_size, repeats):
    probe = cna_tf.ActivationProbe(model)
    usual = usual_way(model, probe)
    fns = {"predict": lambda: model.predict(x, batch_size=batch_size, verbose=0),
           "probe": lambda: probe.layer_sums(x, batch_size=batch_size),
           "usual": lambda: usual(x, batch_size)}
    t = interleaved(fns, repeats=repeats)
    mem = {k: peak_mb(fn) for k, fn in fns.items()}
    res = {k: median(v) for k, v in t.items()}
    return {"case": name, "n": len(x), "batch_size": batch_size, "layers": probe.num_layers,
            "seconds": res, "all_seconds": t, "host_peak_mb": mem,
            "ratio_probe_predict": res["probe"] / res["predict"],
            "ratio_usual_predict": res["usual"] / res["predict"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller inputs (smoke run)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--width", type=float, default=1.0, help="ResNet-18 width multiplier")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n_mlp, n_res = (2000, 200) if args.quick else (10_000, 2_000)
    cases = []
    mlp = cna_tf.models.build("mlp", (28, 28, 1), 10)
    cases.append(case("mlp5x500 28x28x1", mlp, rng.random((n_mlp, 28, 28, 1), dtype=np.float32),
                      args.batch_size, args.repeats))
    res = cna_tf.models.build("resnet18", (32, 32, 3), 10, width=args.width)
    cases.append(case(f"resnet18 w{args.width:g} 32x32x3", res,
                      rng.random((n_res, 32, 32, 3), dtype=np.float32), args.batch_size,
                      max(2, args.repeats // 2)))
    rows = [[c["case"], c["n"], c["layers"], c["seconds"]["predict"], c["seconds"]["probe"],
             c["ratio_probe_predict"], c["seconds"]["usual"], c["ratio_usual_predict"],
             c["host_peak_mb"]["probe"], c["host_peak_mb"]["usual"]] for c in cases]
    print(table(rows, ["case", "n", "L", "predict s", "probe s", "probe/predict", "usual s",
                       "usual/predict", "probe MB", "usual MB"]))
    met = all(c["ratio_probe_predict"] <= 1.10 for c in cases)
    print(f"target probe/predict <= 1.10: {'met' if met else 'MISSED'}")
    path = save("probe", {"machine": machine(), "cases": cases, "target": "<= 1.10",
                          "met": met, "quick": args.quick})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
