"""CNACallback's extra peak host memory with full snapshots of the whole training set.

Issue 20 item 4: the callback's extra peak host memory must stay bounded as the training set
grows. Data: n synthetic 32x32x3 uint8 images (600,000 by default: 1.72 GiB as one array; each
image keeps the top ``8 - shift`` bits of uniform noise, shift 0..7, so alpha varies) and a test
set of n/60 images (10,000 at n = 600,000), random labels; preprocess = /255 to float32. Model:
the 5-layer MLP at width 0.05 (as bench_stream.py), so the forward passes stay cheap.

Each size runs in a fresh subprocess. After building the arrays and the model and one warm-up
fit (compiles the train step), two fits of one epoch on the same 2,048 preprocessed images:

- plain: no callback;
- callback: ``CNACallback((raw, y), (raw_test, y_test), preprocess=..., full_max_samples=None)``
  (the pipelines' ``full_max_samples=0``: every training image), ``mlflow=False``: the
  initialization snapshot and the final one, each a full snapshot (alpha, CNA on the 2,000-point
  subsets, CNA-A, margin, accuracy, loss over all n + n/60 images, baselines).

The peak resident set size (RSS high-water mark, reset through /proc/self/clear_refs before each
fit) above the RSS before that fit; the callback's extra peak = callback fit's - plain fit's.
Reported as a fraction of the raw training array's size. Target: extra peak <= 5 % of the
array + 200 MB.

Run: .venv/bin/python bench/bench_callback_memory.py [--quick] [--out DIR] [--n 60000,600000]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

SHAPE = (32, 32, 3)
IMAGE_BYTES = int(np.prod(SHAPE))
FIT_N = 2048


def synthetic(n: int, seed: int):
    """n uint8 images of varied complexity and random labels, generated in blocks."""
    x = np.empty((n,) + SHAPE, np.uint8)
    y = np.empty(n, np.int64)
    block = 50_000
    for k, s in enumerate(range(0, n, block)):
        e = min(s + block, n)
        rng = np.random.default_rng([seed, k])
        part = rng.integers(0, 256, (e - s,) + SHAPE, dtype=np.uint8)
        shift = rng.integers(0, 8, e - s, dtype=np.uint8)[:, None, None, None]
        x[s:e] = (part >> shift) << shift
        y[s:e] = rng.integers(0, 10, e - s)
    return x, y


def preprocess(raw):
    return raw.astype(np.float32) / np.float32(255)


def mem_worker(n: int, n_test: int) -> dict:
    import warnings

    import keras

    import cna_tf
    from common import peak_rss_mb, reset_peak_rss, rss_mb
    warnings.simplefilter("ignore")  # CNAWarnings of random labels are not the point here
    raw, y = synthetic(n, 0)
    raw_te, y_te = synthetic(n_test, 1)
    model = cna_tf.models.build("mlp", SHAPE, 10, width=0.05, depth=5, seed=0)
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    x_fit, y_fit = preprocess(raw[:FIT_N]), y[:FIT_N]
    model.fit(x_fit, y_fit, epochs=1, batch_size=256, verbose=0)  # compile the train step

    def peak_of(callbacks) -> dict:
        before = rss_mb()
        exact = reset_peak_rss()
        t = time.perf_counter()
        model.fit(x_fit, y_fit, epochs=1, batch_size=256, verbose=0, callbacks=callbacks)
        seconds = time.perf_counter() - t
        peak = peak_rss_mb()
        return {"rss_before_mb": before, "peak_rss_mb": peak, "peak_above_mb": peak - before,
                "rss_after_mb": rss_mb(), "seconds": seconds, "hwm_reset": exact}

    plain = peak_of([])
    cb = cna_tf.CNACallback((raw, y), (raw_te, y_te), preprocess=preprocess,
                            value_range=(0, 255), full_max_samples=None, mlflow=False,
                            log_artifacts=False)
    with_cb = peak_of([cb])
    extra = with_cb["peak_above_mb"] - plain["peak_above_mb"]
    raw_mb = raw.nbytes / 2**20
    return {"n": n, "n_test": n_test, "fit_n": FIT_N, "raw_train_mb": raw_mb,
            "raw_test_mb": raw_te.nbytes / 2**20, "float32_train_mb": 4 * raw_mb,
            "plain": plain, "callback": with_cb, "extra_peak_mb": extra,
            "extra_fraction_of_raw": extra / raw_mb,
            "allowed_mb": 0.05 * raw_mb + 200e6 / 2**20,
            "snapshots": sorted(cb.snapshots),
            "full_train_samples": len(cb.snapshot_alpha["train"]),
            "cna_train": cb.history[1]["cna_train"], "train_acc": cb.history[1]["train_acc"]}


def mem_case(n: int, n_test: int) -> dict:
    from common import run_worker
    return run_worker(__file__, [n, n_test])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default=None,
                    help="training-set sizes, comma-separated (default 60000,600000; "
                         "quick 6000,30000; smoke 1200,6000)")
    from common import parse_args
    args = parse_args(ap, worker=mem_worker)
    from common import load, machine, save, table
    q = args.quick
    sizes = [int(v) for v in (args.n or ("1200,6000" if args.smoke else "6000,30000" if q
                                         else "60000,600000")).split(",")]
    load_before = load()
    runs = [mem_case(n, max(n // 60, 100)) for n in sizes]
    rows = [[r["n"], r["n_test"], r["raw_train_mb"], r["plain"]["peak_above_mb"],
             r["callback"]["peak_above_mb"], r["extra_peak_mb"],
             f"{100 * r['extra_fraction_of_raw']:.2f} %", r["allowed_mb"],
             r["callback"]["seconds"]] for r in runs]
    print(table(rows, ["train n", "test n", "raw MiB", "plain fit peak+ MiB",
                       "callback fit peak+ MiB", "extra MiB", "extra / raw", "allowed MiB",
                       "callback fit s"]))
    lo, hi = runs[0], runs[-1]
    growth = ((hi["extra_peak_mb"] - lo["extra_peak_mb"]) * 2**20 / (hi["n"] - lo["n"])
              if len(runs) > 1 else float("nan"))
    met = hi["extra_peak_mb"] <= hi["allowed_mb"]
    print(f"callback's extra peak RSS at n={hi['n']:,}: {hi['extra_peak_mb']:.1f} MiB = "
          f"{100 * hi['extra_fraction_of_raw']:.2f} % of the {hi['raw_train_mb']:.0f} MiB raw "
          f"array (allowed 5 % + 200 MB = {hi['allowed_mb']:.0f} MiB); growth {growth:.1f} "
          f"bytes per training image (an image is {IMAGE_BYTES} bytes)")
    print(f"target extra peak <= 5 % of the raw array + 200 MB: {'met' if met else 'MISSED'}")
    path = save("callback_memory", {
        "machine": machine(), "runs": runs, "bytes_per_image_growth": growth,
        "extra_fraction_of_raw": hi["extra_fraction_of_raw"],
        "target": "extra peak <= 5 % of the raw training array + 200 MB", "met": met,
        "quick": q, "smoke": args.smoke, "load_before": load_before, "load_after": load()},
        out=args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
