"""What the `score` step adds beyond the user's measure, per network (issue 31, SPEC §11).

Trains one network of each architecture/dataset the demo grid has (MLP, VGG-18 and ResNet-18 on
digits; MLP and ResNet-18 on Gaussian noise; the demo's widths, 1 epoch) with ``save_model``
into a throwaway store, in this process (`pipelines/train.py`), then:

* runs `pipelines/score.py` with a measure that returns 0.0 at once, ``force`` each round, and
  takes its own per-network ``overhead_seconds`` (finding the model, downloading and loading it,
  rebuilding the training set, logging the value and tag, clearing the Keras session);
* splits that per network into its parts, timed alone: ``load`` (download + load_model),
  ``data`` (`train.load_data` + `cna_tf.scoring.training_dataset`, uncached) and ``log`` (the
  metric and tag in one batch);
* the step's CPU time per network (process time, all threads, over the whole forced run
  divided by its networks): what a busy machine does not inflate as it does wall time;
* as the baseline in the same process, ``model.predict`` over the network's training set.

Target: under 1 s of overhead per demo network on the 2-core CPU.

Run: .venv/bin/python bench/bench_score.py [--rounds 3] [--quick] [--out DIR]   (--quick: one
MLP, one forced run)
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "pipelines"))

from common import add_common_args, load, machine, median, save, table  # noqa: E402

#: one network per (arch, dataset) of configs/demo.yaml, at the demo's sizes
DEMO_NETWORKS = [
    {"arch": "mlp", "width": 0.25, "depth": 5},
    {"arch": "vgg18", "width": 0.0625, "lr": 0.01},
    {"arch": "resnet18", "width": 0.0625, "lr": 0.01},
    {"arch": "mlp", "width": 0.25, "dataset": "gaussian",
     "data_options": '{"shape": [8, 8, 1], "train_size": 1000, "test_size": 300}'},
    {"arch": "resnet18", "width": 0.25, "dataset": "gaussian",
     "data_options": '{"shape": [8, 8, 1], "train_size": 1000, "test_size": 300}'},
]
TARGET_S = 1.0
NULL_MEASURE = "def nothing(model, dataset):\n    return 0.0\n"


def _train(cell: dict, backup: Path) -> None:
    import train

    argv = ["--epochs", "1", "--batch_size", "64", "--snapshot_every", "0",
            "--save_model", "true", "--backup_dir", str(backup)]
    for k, v in cell.items():
        argv += [f"--{k}", str(v)]
    train.main(argv)


def parts(client, run, workdir: str) -> dict:
    """One network's overhead split into its parts, each timed alone, and the predict baseline."""
    from mlflow.entities import Metric, RunTag

    import keras
    import score
    from train import load_data

    from cna_tf import scoring

    rid = run.info.run_id
    t = time.perf_counter()
    model = scoring.load_model(client.download_artifacts(rid, score.MODEL_ARTIFACT, workdir))
    t_load = time.perf_counter() - t
    p = score.run_cell_params(run)
    t = time.perf_counter()
    ds = load_data(p)
    dataset = scoring.training_dataset(ds, p["batch_size"])
    t_data = time.perf_counter() - t
    t = time.perf_counter()
    client.log_batch(rid, metrics=[Metric("bench_part", 0.0, int(time.time() * 1000), 1)],
                     tags=[RunTag("bench_part", "x")])
    t_log = time.perf_counter() - t
    x = ds.preprocess(ds.x_train)
    model.predict(x, batch_size=p["batch_size"], verbose=0)  # warm
    t = time.perf_counter()
    model.predict(x, batch_size=p["batch_size"], verbose=0)
    t_predict = time.perf_counter() - t
    del dataset
    keras.backend.clear_session()
    return {"run": run.info.run_name, "arch": p["arch"], "dataset": p["dataset"],
            "n_train": len(ds.x_train), "params": int(model.count_params()), "load_s": t_load,
            "data_s": t_data, "log_s": t_log, "predict_s": t_predict}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="forced score runs timed")
    add_common_args(ap)
    args = ap.parse_args()
    cells = DEMO_NETWORKS[:1] if args.quick else DEMO_NETWORKS
    rounds = 1 if args.quick else args.rounds
    load_before = load()
    with tempfile.TemporaryDirectory(prefix="cna_bench_score_") as tmp:
        import mlflow

        for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            os.environ.pop(k, None)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        exp_id = mlflow.MlflowClient().create_experiment("bench-score",
                                                         artifact_location=f"{tmp}/artifacts")
        mlflow.set_experiment(experiment_id=exp_id)
        for i, cell in enumerate(cells):
            _train(dict(cell, seed=i), Path(tmp) / f"b{i}")
        measure = Path(tmp) / "null_measure.py"
        measure.write_text(NULL_MEASURE)

        import score

        client = mlflow.MlflowClient()
        argv = ["--measure", f"{measure}:nothing", "--experiment", "bench-score"]
        score.main(argv)  # the first scoring: loads TensorFlow's graph code once
        steps, cpu = [], []
        for _ in range(rounds):
            c = time.process_time()
            rows = score.main(argv + ["--force", "true"])
            cpu.append((time.process_time() - c) / len(rows))
            steps.append([r["overhead_seconds"] for r in rows])
        runs = client.search_runs([exp_id], "tags.`cna_tf.role` = 'train'")
        split = [parts(client, r, tmp) for r in sorted(runs, key=lambda r: r.info.run_name)]
    per_net = median([median(s) for s in steps])
    predict = median([s["predict_s"] for s in split])
    print(table([[f"{s['arch']}/{s['dataset']}", s["n_train"], s["params"], s["load_s"],
                  s["data_s"], s["log_s"],
                  s["predict_s"]] for s in split],
                ["network", "n_train", "params", "load s", "data s", "log s", "predict s"]))
    per_net_cpu = median(cpu)
    print(f"score overhead per network: {per_net:.3f} s wall, {per_net_cpu:.3f} s CPU (this "
          f"process, all threads; the whole step divided by its networks) (median of {rounds} "
          f"forced run(s) over "
          f"{len(cells)} networks); model.predict on the training set {predict:.3f} s; ratio "
          f"{per_net / predict:.1f}x; target < {TARGET_S:g} s: "
          f"{'met' if per_net < TARGET_S else 'NOT met'}")
    path = save("score", {"machine": machine(), "quick": args.quick,
                          "smoke": args.smoke, "rounds": rounds,
                          "networks": len(cells), "overhead_per_network_s": per_net,
                          "overhead_rounds_s": steps,
                          "cpu_per_network_s": per_net_cpu, "predict_per_network_s": predict,
                          "ratio_overhead_predict": per_net / predict, "parts": split,
                          "target_s": TARGET_S, "met": bool(per_net < TARGET_S),
                          "load_before": load_before, "load_after": load()}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
