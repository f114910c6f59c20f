"""Cost of SPEC §8's flatness measures (`cna_tf.flatness`): forward passes, gradient steps, time.

Two trained MLPs: the paper's 5x500 MLP on full MNIST (60,000 training images, trained for
``--epochs`` epochs; needs ``python -m cna_tf.data.fetch mnist`` once) with the default subset of
5,000 training points, as the mnist_hparams grid computes them, and a 64-32-10 MLP on
scikit-learn's digits (``--quick``: only this one, subset 500). For each search: bisection steps,
whether it met the tolerance, σ′/α′, forward passes over the subset (counted by the searcher:
examples forward-propagated / subset size), gradient-ascent steps of 64 and seconds; beside
them the time of one ``model.predict`` over the subset (same process).

Run: .venv/bin/python bench/bench_flatness.py [--quick] [--epochs 3] [--out DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import cna_tf  # noqa: E402
from cna_tf import flatness  # noqa: E402
from common import add_common_args, load, machine, median, save, table  # noqa: E402


def trained(name: str, epochs: int):
    keras.utils.set_random_seed(0)
    if name == "digits":
        ds = cna_tf.data.load("digits")
        model = keras.Sequential([keras.Input(ds.input_shape), keras.layers.Flatten(),
                                  keras.layers.Dense(32, activation="relu"),
                                  keras.layers.Dense(ds.num_classes, activation="softmax")])
        batch = 64
    else:
        ds = cna_tf.data.load("mnist")
        model = cna_tf.models.build("mlp", ds.input_shape, ds.num_classes, width=1.0, seed=0)
        batch = 512
    model.compile(keras.optimizers.SGD(0.05, momentum=0.8), "sparse_categorical_crossentropy")
    x = ds.preprocess(ds.x_train)
    model.fit(x, ds.y_train, epochs=epochs, batch_size=batch, verbose=0)
    return model, x, ds.y_train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3, help="training epochs of the MNIST MLP")
    add_common_args(ap)
    args = ap.parse_args()
    cases = [("digits", 30, 200 if args.smoke else 500 if args.quick else 1_000)]
    if not args.quick:
        cases.append(("mnist", args.epochs, 5_000))
    load_before = load()
    rows, results = [], {}
    for name, epochs, samples in cases:
        model, x, y = trained(name, epochs)
        sub = x[:samples]
        model.predict(sub, verbose=0)
        t_predict = []
        for _ in range(5):
            t0 = time.perf_counter()
            model.predict(sub, verbose=0, batch_size=500)
            t_predict.append(time.perf_counter() - t0)
        predict_s = median(t_predict)
        t0 = time.perf_counter()
        res = flatness.search(model, x, y, samples=samples, seed=0)
        total = time.perf_counter() - t0
        for m, r in res.items():
            passes = r.forward_examples / r.samples
            steps = r.gradient_examples // flatness.ASCENT_BATCH
            results[f"{name}/{m}"] = {
                "params": model.count_params(), "samples": r.samples, "steps": len(r.steps),
                "converged": r.converged, "value": r.value, "flatness": r.flatness,
                "forward_passes": passes, "gradient_steps": steps, "seconds": r.seconds,
                "predict_seconds": predict_s, "accuracy": r.accuracy, "trace": r.steps}
            rows.append([f"{name} ({model.count_params():,} params)", m, r.samples,
                         len(r.steps), "yes" if r.converged else "no", r.value, passes, steps,
                         r.seconds])
        results[f"{name}/total_seconds"] = total
        results[f"{name}/predict_seconds"] = predict_s
    print(table(rows, ["model", "measure", "subset", "steps", "converged", "sigma'/alpha'",
                       "forward passes", "grad steps", "seconds"]))
    for name, _, samples in cases:
        print(f"{name}: one model.predict over the {samples}-point subset "
              f"{results[f'{name}/predict_seconds']:.3f} s (median of 5, its fixed overhead "
              "included); all three searches "
              f"{results[f'{name}/total_seconds']:.1f} s")
    path = save("flatness", {"machine": machine(), "results": results, "met": True,
                             "quick": args.quick, "smoke": args.smoke,
                             "load_before": load_before,
                             "load_after": load()}, out=args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
