"""pipelines/train.py with a fault injected: SIGKILLed at the end of epoch $CNA_TF_KILL_AT_EPOCH.

The kill tests (tests/test_faults.py, tests/test_reference.py) run this script with train.py's
arguments in place of ``pipelines/train.py``. The kill comes after the epoch's backup and before
its CNA measurement (``train``'s ``extra_callbacks`` window): the narrowest window in which a
kill could lose or double a logged epoch.

    CNA_TF_KILL_AT_EPOCH=3 python tests/fault_train.py --epochs 6 ...

``CNA_TF_KILL_IN_SUITE=1`` instead SIGKILLs it when training has ended and the suite's final
measures start (a kill after stop_loss ended training); ``CNA_TF_KILL_IN_FINAL_SNAPSHOT=1``
when the CNA callback's full snapshot at the end of training starts (for a run stop_loss
stopped: after that epoch's light measure was logged, before its full one).
"""
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pipelines"))

import keras  # noqa: E402

import train  # noqa: E402


class KillAt(keras.callbacks.Callback):
    """SIGKILLs this process at the end of epoch ``epoch`` (1-based: epochs done)."""

    def __init__(self, epoch: int):
        super().__init__()
        self.kill_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.kill_epoch:
            os.kill(os.getpid(), signal.SIGKILL)


def kill(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    if os.environ.get("CNA_TF_KILL_IN_SUITE"):
        train.log_suite = kill
    if os.environ.get("CNA_TF_KILL_IN_FINAL_SNAPSHOT"):
        from cna_tf.callback import CNACallback

        train_end = CNACallback.on_train_end

        def on_train_end(self, logs=None):
            self._full = kill
            return train_end(self, logs)
        CNACallback.on_train_end = on_train_end
    kill_at = os.environ.get("CNA_TF_KILL_AT_EPOCH")
    train.main(extra_callbacks=[KillAt(int(kill_at))] if kill_at else [])
