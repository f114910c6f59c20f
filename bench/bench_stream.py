"""Peak memory of `cna_tf.evaluate` on a stream of synthetic images: bounded by the batch.

A `keras.utils.PyDataset` generates 32x32x3 uint8 images batch by batch (batch i from a seed of
its own, so every pass yields the same images); the dataset is never in memory: 600,000 images
would be 1.72 GiB as one uint8 array (and 6.9 GiB as float32 model inputs). `evaluate` reads the
train stream (n images) and a test stream (n/10) batch by batch: alpha of the raw batch,
preprocess of the batch, one forward pass; it keeps only per-sample scalars (alpha, beta,
margin, loss as float64 and correctness: 33 bytes per image).

Memory: the peak resident set size (RSS high-water mark) of the `evaluate` call, each size in a
fresh subprocess, measured above the RSS after building the model and one warm-up `evaluate` on
a small stream (/proc/self/clear_refs resets the high-water mark, see common.py). Two sizes show
how the peak grows with n: per image it should grow by the per-sample scalars, not the image.

Target: peak above baseline at the largest n <= 5 % of the dataset's uint8 size.

Run: .venv/bin/python bench/bench_stream.py [--quick] [--out DIR] [--n 60000,600000]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

SHAPE = (32, 32, 3)
IMAGE_BYTES = int(np.prod(SHAPE))


def synthetic_stream(n: int, batch_size: int, seed: int):
    """A PyDataset of n synthetic (uint8 images, labels) batches, generated on demand.

    Each image keeps the top ``8 - shift`` bits of uniform noise (shift 0..7 per image), so the
    images span a range of complexities (alpha from ~0.7 to ~4.6 nats at 100 bins).
    """
    import keras

    class Synthetic(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()

        def __len__(self):
            return -(-n // batch_size)

        def __getitem__(self, i):
            b = min(batch_size, n - i * batch_size)
            rng = np.random.default_rng([seed, i])
            x = rng.integers(0, 256, (b,) + SHAPE, dtype=np.uint8)
            shift = rng.integers(0, 8, b, dtype=np.uint8)[:, None, None, None]
            x = (x >> shift) << shift
            return x, rng.integers(0, 10, b)

    return Synthetic()


def build_model():
    import cna_tf
    return cna_tf.models.build("mlp", SHAPE, 10, width=0.05, depth=5, seed=0)


def preprocess(raw):
    return raw.astype(np.float32) / np.float32(255)


def run_evaluate(model, n: int, batch_size: int) -> dict:
    import cna_tf
    return cna_tf.evaluate(model, synthetic_stream(n, batch_size, 0),
                           synthetic_stream(max(n // 10, 2), batch_size, 1),
                           preprocess=preprocess, value_range=(0, 255), baselines=False)


def mem_worker(n: int, batch_size: int) -> dict:
    import warnings

    from common import peak_rss_mb, reset_peak_rss, rss_mb
    warnings.simplefilter("ignore")  # CNAWarnings of random labels are not the point here
    model = build_model()
    run_evaluate(model, 2 * batch_size, batch_size)  # compile, first batches' buffers
    before = rss_mb()
    exact = reset_peak_rss()
    t = time.perf_counter()
    metrics = run_evaluate(model, n, batch_size)
    seconds = time.perf_counter() - t
    peak = peak_rss_mb()
    return {"n": n, "n_test": max(n // 10, 2), "batch_size": batch_size,
            "rss_before_mb": before, "peak_rss_mb": peak, "peak_above_mb": peak - before,
            "dataset_uint8_mb": n * IMAGE_BYTES / 2**20,
            "dataset_float32_mb": 4 * n * IMAGE_BYTES / 2**20,
            "batch_uint8_mb": batch_size * IMAGE_BYTES / 2**20,
            "seconds": seconds, "images_per_s": (n + max(n // 10, 2)) / seconds,
            "hwm_reset": exact, "cna_train": metrics["cna_train"],
            "alpha_train_mean": metrics["alpha_train_mean"]}


def mem_case(n: int, batch_size: int) -> dict:
    from common import run_worker
    return run_worker(__file__, [n, batch_size])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default=None,
                    help="training-stream sizes, comma-separated (default 60000,600000; "
                         "quick 1200,6000; smoke 600,1200)")
    ap.add_argument("--batch-size", type=int, default=1000)
    from common import parse_args
    args = parse_args(ap, worker=mem_worker)
    from common import load, machine, save, table
    q = args.quick
    sizes = [int(v) for v in (args.n or ("600,1200" if args.smoke else "1200,6000" if q
                                         else "60000,600000")).split(",")]
    load_before = load()
    runs = [mem_case(n, args.batch_size) for n in sizes]
    rows = [[r["n"], r["n_test"], r["batch_size"], r["dataset_uint8_mb"], r["rss_before_mb"],
             r["peak_rss_mb"], r["peak_above_mb"], r["seconds"]] for r in runs]
    print(table(rows, ["train n", "test n", "batch", "dataset MiB (uint8)", "RSS before MiB",
                       "peak MiB", "peak above MiB", "seconds"]))
    lo, hi = runs[0], runs[-1]
    total = lambda r: r["n"] + r["n_test"]  # noqa: E731
    per_image = ((hi["peak_above_mb"] - lo["peak_above_mb"]) * 2**20 / (total(hi) - total(lo))
                 if len(runs) > 1 else float("nan"))
    ratio = hi["peak_above_mb"] / hi["dataset_uint8_mb"]
    met = ratio <= 0.05
    print(f"peak extra RSS at n={hi['n']:,} (+{hi['n_test']:,} test): "
          f"{hi['peak_above_mb']:.1f} MiB = {100 * ratio:.2f} % of the dataset's "
          f"{hi['dataset_uint8_mb']:.0f} MiB (uint8); growth {per_image:.1f} bytes per image "
          f"between n={lo['n']:,} and n={hi['n']:,} (an image is {IMAGE_BYTES} bytes)")
    print(f"target peak above baseline <= 5 % of the dataset: {'met' if met else 'MISSED'}")
    path = save("stream", {"machine": machine(), "runs": runs, "bytes_per_image_growth": per_image,
                           "peak_fraction_of_dataset": ratio,
                           "target": "peak above baseline <= 5 % of the uint8 dataset",
                           "met": met, "quick": q, "smoke": args.smoke,
                           "load_before": load_before,
                           "load_after": load()}, out=args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
