"""ActivationProbe.layer_outputs vs keract-style per-layer sub-models, on the same model.

What Keras users reach for to get intermediate outputs (keract's ``get_activations``): one
``keras.Model(model.inputs, layer.output)`` per layer, ``predict`` on each. `layer_outputs`
returns every probe layer's unreduced activation from one compiled forward pass. Both return
the same arrays (checked: max |difference| is reported), in a mode where ``layer.output`` is the
probe's value: ``post`` for the MLP (Dense layers with a fused ReLU), ``pre`` for ResNet-18 (Conv
layers without bias or activation, followed by BatchNormalization).

Timed, interleaved in one process (bench/common.py): ``layer_outputs`` (its model built
once, as a probe keeps it), the per-layer sub-models (built once, outside the timing: the
baseline's best case; keract rebuilds them on every call, reported as ``with_build``), and one
multi-output sub-model ``keras.Model(model.inputs, [every layer.output])`` for reference.

Models: the paper's MLP 5x500 on 28x28x1 (2,000 inputs) and ResNet-18 at width 0.25 on 32x32x3
(500 inputs); batch 256.

Run: .venv/bin/python bench/bench_layer_outputs.py [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

CASES = {"mlp": ((28, 28, 1), 1.0, "post", "mlp5x500 28x28x1"),
         "resnet18": ((32, 32, 3), 0.25, "pre", "resnet18 w0.25 32x32x3")}


def per_layer_submodels(model, layers):
    import keras
    return [keras.Model(model.inputs, layer.output) for layer in layers]


def case(name: str, n: int, batch_size: int, repeats: int) -> dict:
    import cna_tf
    from common import interleaved_cpu, median
    shape, width, mode, label = CASES[name]
    kw = {"width": width} if name != "mlp" else {}
    model = cna_tf.models.build(name, shape, 10, seed=0, **kw)
    x = np.random.default_rng(0).random((n,) + shape, dtype=np.float32)
    probe = cna_tf.ActivationProbe(model, mode=mode)
    subs = per_layer_submodels(model, probe.layers)
    import keras
    one = keras.Model(model.inputs, [layer.output for layer in probe.layers])

    def run_subs(models):
        return [m.predict(x, batch_size=batch_size, verbose=0) for m in models]

    got = probe.layer_outputs(x, batch_size=batch_size)
    want = run_subs(subs)
    diff = max(float(np.max(np.abs(g - w))) for g, w in zip(got.values(), want))
    scale = max(float(np.max(np.abs(w))) for w in want)
    fns = {"layer_outputs": lambda: probe.layer_outputs(x, batch_size=batch_size),
           "per_layer_submodels": lambda: run_subs(subs),
           "one_submodel": lambda: one.predict(x, batch_size=batch_size, verbose=0)}
    wall, cpu = interleaved_cpu(fns, repeats=repeats)
    t = time.perf_counter()
    run_subs(per_layer_submodels(model, probe.layers))  # keract rebuilds them on every call
    with_build = time.perf_counter() - t
    s = {k: median(v) for k, v in wall.items()}
    c = {k: median(v) for k, v in cpu.items()}
    return {"case": label, "model": name, "mode": mode, "n": n, "batch_size": batch_size,
            "layers": probe.num_layers, "seconds": s, "all_seconds": wall, "cpu_seconds": c,
            "per_layer_submodels_with_build_s": with_build,
            "ratio_per_layer_to_layer_outputs": s["per_layer_submodels"] / s["layer_outputs"],
            "ratio_per_layer_to_layer_outputs_min": min(wall["per_layer_submodels"])
            / min(wall["layer_outputs"]),
            "cpu_ratio_per_layer_to_layer_outputs": c["per_layer_submodels"]
            / c["layer_outputs"],
            "ratio_with_build_to_layer_outputs": with_build / s["layer_outputs"],
            "ratio_one_submodel_to_layer_outputs": s["one_submodel"] / s["layer_outputs"],
            "max_abs_diff": diff, "max_abs_value": scale,
            "activation_mb": sum(a.nbytes for a in got.values()) / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--mlp-n", type=int, default=None, help="default 2,000 (quick 300)")
    ap.add_argument("--resnet-n", type=int, default=None, help="default 500 (quick 32)")
    from common import add_common_args
    add_common_args(ap)
    args = ap.parse_args()
    from common import load, machine, save, table
    q = args.quick
    repeats = (1 if args.smoke else 2 if q else 5) if args.repeats == 5 else args.repeats
    load_before = load()
    cases = [case("mlp", args.mlp_n or (300 if q else 2_000), args.batch_size, repeats),
             case("resnet18", args.resnet_n or (32 if q else 500), args.batch_size, repeats)]
    rows = [[c["case"], c["mode"], c["n"], c["layers"], c["seconds"]["layer_outputs"],
             c["seconds"]["per_layer_submodels"], c["ratio_per_layer_to_layer_outputs"],
             c["cpu_ratio_per_layer_to_layer_outputs"], c["ratio_with_build_to_layer_outputs"],
             c["ratio_one_submodel_to_layer_outputs"], c["max_abs_diff"]] for c in cases]
    print(table(rows, ["case", "mode", "n", "L", "layer_outputs s", "per-layer s",
                       "per-layer/layer_outputs", "(CPU s)", "(with build)",
                       "one sub-model/layer_outputs", "max |diff|"]))
    met = all(c["ratio_per_layer_to_layer_outputs"] >= 1.0 for c in cases)
    print(f"layer_outputs at least as fast as per-layer sub-models: {'yes' if met else 'NO'}")
    path = save("layer_outputs", {"machine": machine(), "cases": cases,
                                  "target": "per-layer sub-models / layer_outputs >= 1",
                                  "met": met, "quick": q, "smoke": args.smoke,
                                  "load_before": load_before,
                                  "load_after": load()}, out=args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
