"""`make demo`: train the paper's MLP on scikit-learn's bundled digits and print the CNA metrics.

Runs offline in well under a minute on a CPU:

    python -m cna_tf.demo --epochs 10
"""
from __future__ import annotations

import argparse
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.4f}"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--momentum", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import keras

    import cna_tf

    keras.utils.set_random_seed(args.seed)
    ds = cna_tf.data.load("digits", seed=args.seed)
    model = cna_tf.models.build("mlp", ds.input_shape, ds.num_classes)
    model.compile(optimizer=keras.optimizers.SGD(args.lr, momentum=args.momentum),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    train, test = (ds.x_train, ds.y_train), (ds.x_test, ds.y_test)
    probe = cna_tf.ActivationProbe(model)
    print(f"digits: {len(ds.x_train)} train / {len(ds.x_test)} test images {ds.input_shape}; "
          f"MLP probe layers: {probe.layer_names}")

    def report(tag: str) -> dict:
        m = cna_tf.evaluate(model, train, test, preprocess=ds.preprocess,
                            value_range=ds.value_range, probe=probe)
        print(f"\n[{tag}]")
        print(f"  alpha  train mean {m['alpha_train_mean']:.4f} sd {m['alpha_train_std']:.4f}"
              f"   test mean {m['alpha_test_mean']:.4f} sd {m['alpha_test_std']:.4f}")
        print(f"  beta   train mean {m['beta_train_mean']:.4g} sd {m['beta_train_std']:.4g}"
              f"   test mean {m['beta_test_mean']:.4g} sd {m['beta_test_std']:.4g}")
        print(f"  CNA    train {_fmt(m['cna_train'])}   test {_fmt(m['cna_test'])}")
        print(f"  CNA-A  {m['cna_area']:.4f}   margin {m['margin']:.4f}   "
              f"CNA-M {m['cna_margin']:.4f}")
        print(f"  acc    train {m['train_acc']:.4f}   test {m['test_acc']:.4f}   "
              f"gen_gap {m['gen_gap']:+.4f}   loss_gap {m['loss_gap']:+.4f}")
        return m

    report("initialization")
    model.fit(ds.preprocess(ds.x_train), ds.y_train, epochs=args.epochs,
              batch_size=args.batch_size, verbose=2)
    return report(f"after {args.epochs} epochs")


if __name__ == "__main__":
    main()
