"""ActivationProbe vs its floor (model.predict) and vs the usual way (every layer to the host).

Targets (issue 20 item 5): probe.layer_sums time / model.predict time <= 1.05 at every batch
size from 64 to 2,048 (the sweep: 64, 128, 256, 512, 1024, 2048) on
  - the 5x500 MLP on 10,000 inputs of 3,072 features (32x32x3; the first table: 28x28x1),
  - ResNet-18 (width 1) at 32x32x3 on 2,000 inputs,
same inputs, same batch size, same process, interleaved repeats (every batch size and both
methods alternate within each round). Wall times on a shared machine swing (identical calls can
take t or 2t), so each ratio is given three ways: of the median times, of the fastest times, and
of the median process CPU seconds. The first table (--batch-size, default 256) also times the
usual way (below).

The usual way (what activation-extraction libraries do): a keras.Model returning every probe
layer's full output, fetched to numpy and summed on the host. Its time is compared with
model.predict on the same inputs; where its fetched activations would exceed --usual-max-gb
(ResNet-18: 2.3 MiB per input), it runs on the first n_usual inputs and is compared with
model.predict on those same inputs.

Memory: the peak resident set size (RSS high-water mark) of one call, each case in a fresh
subprocess, measured above the process's RSS after building the model, the inputs and one
warm-up call on a single batch (/proc/self/clear_refs resets the high-water mark). tracemalloc
does not see TensorFlow's allocations, so it is not used. Two sizes n show how the peak grows:
with n * L for the probe, with n * (activation size) for the usual way.

Run: .venv/bin/python bench/bench_probe.py [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

MODELS = {"mlp": ((28, 28, 1), "mlp5x500 28x28x1"), "resnet18": ((32, 32, 3), "resnet18 32x32x3"),
          "mlp3072": ((32, 32, 3), "mlp5x500 32x32x3")}  # the sweep's MLP: 3,072 features


def build(name: str, width: float):
    import cna_tf
    shape, _ = MODELS[name]
    kw = {"width": width} if not name.startswith("mlp") else {}
    return cna_tf.models.build("mlp" if name.startswith("mlp") else name, shape, 10, seed=0,
                               **kw)


def inputs(name: str, n: int) -> np.ndarray:
    return np.random.default_rng(0).random((n,) + MODELS[name][0], dtype=np.float32)


def usual_way(model, probe):
    """What activation-extraction libraries do: return every probe layer's full output."""
    import keras
    extractor = keras.Model(model.inputs, [layer.output for layer in probe.layers])

    def run(x, batch_size):
        full = extractor.predict(x, batch_size=batch_size, verbose=0)
        return np.stack([a.reshape(len(a), -1).sum(1) for a in full], axis=1)
    return run


def bytes_per_input(probe) -> int:
    """Bytes of every probe layer's full output for one input (float32)."""
    return 4 * sum(int(np.prod(layer.output.shape[1:])) for layer in probe.layers)


def methods(model, probe):
    usual = usual_way(model, probe)
    return {"predict": lambda x, b: model.predict(x, batch_size=b, verbose=0),
            "probe": lambda x, b: probe.layer_sums(x, batch_size=b),
            "usual": usual}


# -- time ---------------------------------------------------------------------------------------
def time_case(name, width, n, batch_size, repeats, usual_max_gb):
    import cna_tf
    from common import interleaved_cpu, median
    model = build(name, width)
    probe = cna_tf.ActivationProbe(model)
    x = inputs(name, n)
    per_input = bytes_per_input(probe)
    n_usual = int(min(n, max(batch_size, usual_max_gb * 2**30 // per_input)))
    f = methods(model, probe)
    fns = {"predict": lambda: f["predict"](x, batch_size),
           "probe": lambda: f["probe"](x, batch_size)}
    xu = x[:n_usual]
    if n_usual < n:
        fns["predict_usual_n"] = lambda: f["predict"](xu, batch_size)
    fns["usual"] = lambda: f["usual"](xu, batch_size)
    t, cpu = interleaved_cpu(fns, repeats=repeats)
    s = {k: median(v) for k, v in t.items()}
    c = {k: median(v) for k, v in cpu.items()}
    base_usual = s.get("predict_usual_n", s["predict"])
    return {"case": MODELS[name][1] + (f" w{width:g}" if name != "mlp" else ""), "model": name,
            "width": width, "n": n, "n_usual": n_usual, "batch_size": batch_size,
            "layers": probe.num_layers, "activation_mb_per_input": per_input / 2**20,
            "seconds": s, "all_seconds": t,
            "ratio_probe_predict": s["probe"] / s["predict"],
            "ratio_usual_predict": s["usual"] / base_usual,
            # Less sensitive to other processes: fastest runs, and the median of the ratios of
            # the runs made side by side in each round.
            "ratio_probe_predict_min": min(t["probe"]) / min(t["predict"]),
            "ratio_probe_predict_paired": median([a / b for a, b in zip(t["probe"],
                                                                         t["predict"])]),
            "ratio_usual_predict_min": min(t["usual"]) / min(t.get("predict_usual_n",
                                                                   t["predict"])),
            "cpu_seconds": c, "all_cpu_seconds": cpu,
            "cpu_ratio_probe_predict": c["probe"] / c["predict"],
            "cpu_ratio_usual_predict": c["usual"] / c.get("predict_usual_n", c["predict"])}


SWEEP = (64, 128, 256, 512, 1024, 2048)


def batch_sweep(name, width, n, sizes, repeats) -> list:
    """probe.layer_sums vs model.predict at each batch size, all interleaved in each round."""
    import cna_tf
    from common import interleaved_cpu, median
    model = build(name, width)
    probe = cna_tf.ActivationProbe(model)
    x = inputs(name, n)
    fns = {}
    for b in sizes:
        fns[f"predict@{b}"] = lambda b=b: model.predict(x, batch_size=b, verbose=0)
        fns[f"probe@{b}"] = lambda b=b: probe.layer_sums(x, batch_size=b)
    t, cpu = interleaved_cpu(fns, repeats=repeats)
    rows = []
    for b in sizes:
        tp, tq = t[f"predict@{b}"], t[f"probe@{b}"]
        cp, cq = cpu[f"predict@{b}"], cpu[f"probe@{b}"]
        mlp = name.startswith("mlp")
        rows.append({"model": "mlp" if mlp else name,
                     "case": MODELS[name][1] + ("" if mlp else f" w{width:g}"),
                     "n": n, "batch_size": b, "repeats": repeats,
                     "predict_s": median(tp), "probe_s": median(tq),
                     "ratio_median": median(tq) / median(tp),
                     "ratio_fastest": min(tq) / min(tp),
                     "ratio_cpu": median(cq) / median(cp),
                     "all_seconds": {"predict": tp, "probe": tq},
                     "all_cpu_seconds": {"predict": cp, "probe": cq}})
    return rows


# -- memory (one measurement per fresh subprocess) ----------------------------------------------
def mem_worker(name: str, width: float, n: int, method: str, batch_size: int) -> dict:
    import cna_tf
    from common import peak_rss_mb, reset_peak_rss, rss_mb
    model = build(name, width)
    probe = cna_tf.ActivationProbe(model)
    x = inputs(name, n)
    fn = methods(model, probe)[method]
    fn(x[:batch_size], batch_size)  # compile + one batch's buffers
    before = rss_mb()
    exact = reset_peak_rss()
    t = time.perf_counter()
    out = fn(x, batch_size)
    seconds = time.perf_counter() - t
    peak = peak_rss_mb()
    fetched = {"predict": n * 4 * int(np.prod(model.outputs[0].shape[1:])),
               "probe": n * 4 * probe.num_layers, "usual": n * bytes_per_input(probe)}[method]
    del out
    return {"model": name, "width": width, "n": n, "method": method, "batch_size": batch_size,
            "rss_before_mb": before, "peak_rss_mb": peak, "peak_above_mb": peak - before,
            "fetched_mb": fetched / 2**20, "seconds": seconds, "hwm_reset": exact,
            "layers": probe.num_layers}


def mem_case(name, width, n, method, batch_size) -> dict:
    from common import run_worker
    return run_worker(__file__, [name, width, n, method, batch_size])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="MLP repeats (ResNet-18: half, >= 3)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--sweep", default=None,
                    help="batch sizes of the sweep (default 64,...,2048; quick 64,256,2048; "
                    "smoke 64,2048)")
    ap.add_argument("--width", type=float, default=1.0, help="ResNet-18 width multiplier")
    ap.add_argument("--mlp-n", type=int, default=None,
                    help="default 10,000 (quick 2,000; smoke 500)")
    ap.add_argument("--resnet-n", type=int, default=None,
                    help="default 2,000 (quick 100; smoke 16)")
    ap.add_argument("--mem-n", default=None,
                    help="MLP sizes of the memory runs (default 2000,8000; quick 500,2000; "
                    "smoke 200,800)")
    ap.add_argument("--mem-resnet-n", default=None,
                    help="ResNet-18 sizes of the memory runs (default 250,1000; quick: none)")
    ap.add_argument("--usual-max-gb", type=float, default=2.0,
                    help="cap on the activations the usual way fetches in the timing runs")
    from common import parse_args
    args = parse_args(ap, worker=mem_worker)
    from common import load, machine, save, table
    q, smoke = args.quick, args.smoke
    n_mlp = args.mlp_n or (500 if smoke else 2_000 if q else 10_000)
    n_res = args.resnet_n or (16 if smoke else 100 if q else 2_000)
    mem_n = [int(v) for v in (args.mem_n or ("200,800" if smoke else "500,2000" if q
                                             else "2000,8000")).split(",")]
    mem_res = [int(v) for v in (args.mem_resnet_n or ("" if q else "250,1000")).split(",") if v]
    repeats = (1 if smoke else 2 if q else 5) if args.repeats == 5 else args.repeats
    load_before = load()

    cases = [time_case("mlp", 1.0, n_mlp, args.batch_size, repeats, args.usual_max_gb),
             time_case("resnet18", args.width, n_res, args.batch_size,
                       max(1 if smoke else 2 if q else 3, repeats // 2),
                       args.usual_max_gb)]
    rows = [[c["case"], c["n"], c["layers"], c["seconds"]["predict"], c["seconds"]["probe"],
             c["ratio_probe_predict"], c["ratio_probe_predict_min"],
             c["ratio_probe_predict_paired"], c["cpu_ratio_probe_predict"], c["n_usual"],
             c["seconds"]["usual"], c["ratio_usual_predict"], c["cpu_ratio_usual_predict"]]
            for c in cases]
    print(table(rows, ["case", "n", "L", "predict s", "probe s", "probe/predict",
                       "(fastest)", "(paired)", "(CPU s)", "n usual", "usual s",
                       "usual/predict", "(CPU s)"]))
    sizes = [int(v) for v in (args.sweep or ("64,2048" if smoke else "64,256,2048" if q else
                                             ",".join(map(str, SWEEP)))).split(",")]
    sweep = (batch_sweep("mlp3072", 1.0, n_mlp, sizes, repeats)
             + batch_sweep("resnet18", args.width, n_res, sizes,
                           max(1 if smoke else 2 if q else 3, repeats // 2)))
    print(table([[r["case"], r["n"], r["batch_size"], r["predict_s"], r["probe_s"],
                  r["ratio_median"], r["ratio_fastest"], r["ratio_cpu"]] for r in sweep],
                ["case", "n", "batch", "predict s", "probe s", "probe/predict (median)",
                 "(fastest)", "(CPU s)"]))
    met = all(r["ratio_median"] <= 1.05 for r in sweep)
    met_fastest = all(r["ratio_fastest"] <= 1.05 for r in sweep)
    met_cpu = all(r["ratio_cpu"] <= 1.05 for r in sweep)
    print(f"target probe/predict <= 1.05 at every batch size: {'met' if met else 'MISSED'} "
          f"(median); {'met' if met_fastest else 'MISSED'} (fastest); "
          f"{'met' if met_cpu else 'MISSED'} (CPU s)")

    memory = []
    for name, width, sizes, meths in (
            ("mlp", 1.0, mem_n, ("predict", "probe", "usual")),
            ("resnet18", args.width, mem_res, ("predict", "probe", "usual"))):
        for method in meths:
            for n in sizes:
                memory.append(mem_case(name, width, n, method, args.batch_size))
    rows = [[m["model"], m["method"], m["n"], m["rss_before_mb"], m["peak_rss_mb"],
             m["peak_above_mb"], m["fetched_mb"]] for m in memory]
    print(table(rows, ["model", "method", "n", "RSS before MiB", "peak MiB", "peak above MiB",
                       "fetched MiB"]))
    growth = {}
    for name in ("mlp", "resnet18"):
        for method in ("predict", "probe", "usual"):
            ms = sorted((m for m in memory if m["model"] == name and m["method"] == method),
                        key=lambda m: m["n"])
            if len(ms) >= 2:
                lo, hi = ms[0], ms[-1]
                growth[f"{name}/{method}"] = {
                    "n": [lo["n"], hi["n"]],
                    "peak_above_mb": [lo["peak_above_mb"], hi["peak_above_mb"]],
                    "mb_per_1000_inputs": (hi["peak_above_mb"] - lo["peak_above_mb"])
                    / (hi["n"] - lo["n"]) * 1000,
                    "fetched_mb": [lo["fetched_mb"], hi["fetched_mb"]]}
    for key, g in growth.items():
        base = growth.get(key.split("/")[0] + "/predict")
        if base is not None and base["n"] == g["n"]:
            g["above_predict_mb"] = [a - b for a, b in zip(g["peak_above_mb"],
                                                           base["peak_above_mb"])]
    for k, g in growth.items():
        print(f"{k}: peak above baseline {g['peak_above_mb'][0]:.1f} -> "
              f"{g['peak_above_mb'][1]:.1f} MiB for n {g['n'][0]} -> {g['n'][1]} "
              f"({g['mb_per_1000_inputs']:.2f} MiB per 1,000 inputs; fetched "
              f"{g['fetched_mb'][0]:.2f} -> {g['fetched_mb'][1]:.2f} MiB)")
    path = save("probe", {"machine": machine(), "cases": cases, "memory": memory,
                          "memory_growth": growth, "batch_sweep": sweep,
                          "target": "probe/predict <= 1.05 (median) at batch sizes 64..2048",
                          "met": met, "met_fastest": met_fastest, "met_cpu": met_cpu,
                          "quick": q, "smoke": smoke, "load_before": load_before,
                          "load_after": load()},
                out=args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
