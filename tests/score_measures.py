"""Measures in PGDL's form (`complexity(model, dataset)`) for tests/test_score.py."""
import os
import signal

import numpy as np

NOT_CALLABLE = 3.0
_calls = {"n": 0}


def _arrays(dataset):
    xs, ys = zip(*[(np.asarray(x), np.asarray(y)) for x, y in dataset])
    return np.concatenate(xs), np.concatenate(ys)


def output_mean(model, dataset):
    """The mean predicted probability of class 0 over the training set."""
    x, _ = _arrays(dataset)
    return float(np.asarray(model.predict(x, verbose=0))[:, 0].mean())


def n_points(model, dataset):
    return len(_arrays(dataset)[1])


def label_sum(model, dataset):
    return int(_arrays(dataset)[1].sum())


def label_order(model, dataset):
    """Sum of position x label: changes with the labels' order and with shuffled labels."""
    y = _arrays(dataset)[1]
    return int((np.arange(len(y)) * y).sum())


def train_accuracy(model, dataset):
    x, y = _arrays(dataset)
    return float((np.asarray(model.predict(x, verbose=0)).argmax(1) == y).mean())


def flaky(model, dataset):
    """Call 1 scores; call 2 raises, call 3 returns NaN, call 4 an array (counted per import)."""
    _calls["n"] += 1
    n = _calls["n"]
    if n == 2:
        raise RuntimeError("flaky measure failed on purpose")
    if n == 3:
        return float("nan")
    if n == 4:
        return np.ones(3)
    return 1.0


def kill_on_second(model, dataset):
    """SIGKILLs its own process on the second call ever (counted in $SCORE_TEST_COUNTER)."""
    path = os.environ["SCORE_TEST_COUNTER"]
    n = int(open(path).read()) + 1 if os.path.exists(path) else 1
    with open(path, "w") as f:
        f.write(str(n))
    if n == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return float(model.count_params())


def one_arg(model):
    return 0.0


def noise(model, dataset):
    """A random draw: the same on every scoring only if the step seeds it."""
    return float(np.random.random())
