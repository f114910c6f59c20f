"""Cost of SPEC §12's measure suite (`cna_tf.suite.compute`) per network, as a ratio to one
epoch of training in the same process.

Two networks: the demo MLP (`cna_tf.models.build("mlp")`, 5x500, on scikit-learn's digits, as
``make demo`` trains it) and a VGG-18 at width 0.25 (on ``--vgg_train`` MNIST training images;
``--quick``: on digits, 8x8). Each is trained for two epochs from its captured initial weights;
the second epoch's wall time is "one epoch" (the first traces the training function). Then, on
the whole training set (m points): the cheap measures (everything but the searches) twice
(the first call is what a training run pays once per network: it builds and traces the logits
model; the second is warm), and each of the four searches on its own (its σ′/α′ bisection on
``min(m, samples)`` points). Target: the cheap measures under 1 s per network on this CPU.

Run: .venv/bin/python bench/bench_suite.py [--quick | --smoke] [--vgg_train 1000] [--out DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402

import cna_tf  # noqa: E402
from cna_tf import suite  # noqa: E402
from common import add_common_args, load, machine, save, table  # noqa: E402

TARGET_S = 1.0  # cheap measures per network (issue 37)
SEARCHES = ("pacbayes_flatness", "pacbayes_mag_flatness", "sharpness_flatness",
            "sharpness_mag_flatness")


def network(arch: str, dataset: str, n_train):
    keras.utils.set_random_seed(0)
    ds = cna_tf.data.load(dataset, n_train=n_train, seed=0)
    width = 1.0 if arch == "mlp" else 0.25
    model = cna_tf.models.build(arch, ds.input_shape, ds.num_classes, width=width, seed=0)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.8),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, ds.preprocess(ds.x_train), ds.y_train


def measure(arch: str, dataset: str, n_train, samples: int) -> dict:
    model, x, y = network(arch, dataset, n_train)
    initial = suite.capture_initial_weights(model)
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)           # traces the train step
    t0 = time.perf_counter()
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    epoch_s = time.perf_counter() - t0
    cheap = []
    for _ in range(2):
        t0 = time.perf_counter()
        res = suite.compute(model, x, y, initial_weights=initial, names=suite.CHEAP)
        cheap.append(time.perf_counter() - t0)
    nan = sorted(res.reasons)
    searches = {}
    for name in SEARCHES:
        t0 = time.perf_counter()
        r = suite.compute(model, x, y, initial_weights=initial, names=[name], samples=samples)
        searches[name] = {"seconds": time.perf_counter() - t0,
                          "search_seconds": r.seconds[name],
                          "value": r.parameters[{"pacbayes_flatness": "pacbayes_sigma",
                                                 "pacbayes_mag_flatness": "pacbayes_mag_sigma",
                                                 "sharpness_flatness": "sharpness_alpha",
                                                 "sharpness_mag_flatness":
                                                     "sharpness_mag_alpha"}[name]],
                          "ratio_to_epoch": (time.perf_counter() - t0) / epoch_s}
    total = cheap[0] + sum(s["seconds"] for s in searches.values())
    return {"arch": arch, "dataset": dataset, "params": model.count_params(), "m": len(x),
            "search_samples": min(len(x), samples), "epoch_seconds": epoch_s,
            "cheap_seconds": cheap[0], "cheap_seconds_warm": cheap[1],
            "cheap_ratio_to_epoch": cheap[0] / epoch_s, "cheap_measures": len(suite.CHEAP),
            "cheap_nan": nan, "searches": searches, "total_seconds": total,
            "total_ratio_to_epoch": total / epoch_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vgg_train", type=int, default=1000,
                    help="MNIST training images of the VGG-18 (default 1000)")
    ap.add_argument("--samples", type=int, default=5000, help="search subset (SPEC §8: 5000)")
    add_common_args(ap)
    args = ap.parse_args()
    cases = [("mlp", "digits", None), ("vgg18", "mnist", args.vgg_train)]
    samples = args.samples
    if args.quick:
        n = 150 if args.smoke else 300
        cases = [("mlp", "digits", n), ("vgg18", "digits", n)]
        samples = 50 if args.smoke else 100
    load_before = load()
    results = {}
    rows = []
    for arch, dataset, n in cases:
        r = measure(arch, dataset, n, samples)
        results[f"{arch}/{dataset}"] = r
        rows.append([f"{arch} {dataset} ({r['params']:,} params, m={r['m']})",
                     r["epoch_seconds"], r["cheap_seconds"], r["cheap_seconds_warm"],
                     r["cheap_ratio_to_epoch"]]
                    + [r["searches"][s]["ratio_to_epoch"] for s in SEARCHES]
                    + [r["total_ratio_to_epoch"]])
    print(table(rows, ["network", "epoch s", "cheap s", "cheap s (warm)", "cheap/epoch"]
                + [f"{s}/epoch" for s in SEARCHES] + ["suite/epoch"]))
    met = all(r["cheap_seconds"] < TARGET_S for r in results.values())
    print(f"cheap measures under {TARGET_S:g} s per network: {'yes' if met else 'NO'}")
    path = save("suite", {"machine": machine(), "results": results, "met": met,
                          "target_s": TARGET_S, "quick": args.quick, "smoke": args.smoke,
                          "samples": samples,
                          "load_before": load_before, "load_after": load()}, out=args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
