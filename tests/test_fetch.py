"""`python -m cna_tf.data.fetch`: each dataset fetched in its real format, then loaded; failures.

An HTTP server on 127.0.0.1, started here, plays the origins (``CNA_TF_DATA_MIRROR`` points at
it) and serves small files written here in each dataset's real format: Keras' gzipped IDX files
of Fashion-MNIST, the CIFAR-10 / CIFAR-100 python archives, SVHN's MATLAB files. The registry of
origins (`cna_tf.data.download.SOURCES`) is pointed at these files' own hashes; the real origins'
pins are checked against their sources separately. Nothing here reaches the internet.
"""
import gzip
import hashlib
import http.server
import io
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cna_tf import data as D
from cna_tf.data import download as dl
from cna_tf.data import fetch

ROOT = Path(__file__).resolve().parent.parent


# -- files in each dataset's real format --------------------------------------------------------
def _idx_gz(a: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return gzip.compress(header + a.astype(np.uint8).tobytes())


def _tar_gz(members: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            t.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _cifar_pickle(x: np.ndarray, labels: dict) -> bytes:
    # as the originals: a dict with bytes keys, data (n, 3072) in channel planes, list labels
    d = {b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1).copy()}
    d.update({k: [int(v) for v in y] for k, y in labels.items()})
    return pickle.dumps(d, protocol=2)


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def _mat(x: np.ndarray, y: np.ndarray) -> bytes:
    from scipy.io import savemat

    buf = io.BytesIO()
    # SVHN's layout: X (32, 32, 3, n), y (n, 1) with the digit 0 as 10
    savemat(buf, {"X": x.transpose(1, 2, 3, 0), "y": np.where(y == 0, 10, y).reshape(-1, 1)
                  .astype(np.uint8)})
    return buf.getvalue()


def make_dataset(name: str, rng) -> tuple:
    """``(files, expected arrays)``: the files the origin serves, and what load must return."""
    if name == "fashion_mnist":
        xtr, xte = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for n in (12, 5))
        ytr, yte = rng.integers(0, 10, 12), rng.integers(0, 10, 5)
        files = {"train-images-idx3-ubyte.gz": _idx_gz(xtr), "train-labels-idx1-ubyte.gz":
                 _idx_gz(ytr), "t10k-images-idx3-ubyte.gz": _idx_gz(xte),
                 "t10k-labels-idx1-ubyte.gz": _idx_gz(yte)}
        return files, (xtr, ytr, xte, yte)
    if name == "cifar10":
        parts = [(rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 3))
                 for _ in range(6)]
        members = {f"cifar-10-batches-py/data_batch_{i + 1}": _cifar_pickle(x, {b"labels": y})
                   for i, (x, y) in enumerate(parts[:5])}
        members["cifar-10-batches-py/test_batch"] = _cifar_pickle(parts[5][0],
                                                                  {b"labels": parts[5][1]})
        members["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"label_names": []})
        expected = (np.concatenate([p[0] for p in parts[:5]]),
                    np.concatenate([p[1] for p in parts[:5]]), *parts[5])
        return {"cifar-10-python.tar.gz": _tar_gz(members)}, expected
    if name == "cifar100":
        xtr, xte = (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for n in (8, 4))
        ytr, yte = rng.integers(0, 100, 8), rng.integers(0, 100, 4)
        members = {"cifar-100-python/train": _cifar_pickle(xtr, {b"fine_labels": ytr,
                                                                 b"coarse_labels": ytr // 5}),
                   "cifar-100-python/test": _cifar_pickle(xte, {b"fine_labels": yte,
                                                                b"coarse_labels": yte // 5})}
        return {"cifar-100-python.tar.gz": _tar_gz(members)}, (xtr, ytr, xte, yte)
    assert name == "svhn"
    xtr, xte = (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for n in (10, 4))
    ytr, yte = np.arange(10), np.array([0, 3, 0, 9])  # digit 0 present: stored as 10
    return ({"train_32x32.mat": _mat(xtr, ytr), "test_32x32.mat": _mat(xte, yte)},
            (xtr, ytr, xte, yte))


# -- the origin: an HTTP server on 127.0.0.1 ----------------------------------------------------
class Origin:
    """Serves ``files``; ``truncate`` names files sent short of their Content-Length, ``stall``
    files sent half and then held until ``release`` is set. ``hits`` counts GETs per file."""

    def __init__(self):
        self.files, self.truncate, self.stall = {}, set(), set()
        self.hits: dict = {}
        self.release = threading.Event()
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                origin.hits[name] = origin.hits.get(name, 0) + 1
                body = origin.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) + (
                    4096 if name in origin.truncate else 0)))
                self.end_headers()
                if name in origin.stall:
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    origin.release.wait(120)
                    return
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/mirror/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def origin(tmp_path, monkeypatch):
    """The mirror, with the Keras cache and the cna_tf cache in temporary folders."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("CNA_TF_DATA", str(tmp_path / "data"))
    with Origin() as o:
        monkeypatch.setenv(dl.ENV_MIRROR, o.url)
        yield o


def serve(origin: Origin, monkeypatch, name: str, files: dict, sha=None) -> None:
    """Serves a dataset's files and pins the registry to their hashes (or to ``sha``)."""
    origin.files.update(files)
    monkeypatch.setitem(dl.SOURCES, name, tuple(
        dl.Remote(f, "https://origin.invalid/", sha or hashlib.sha256(b).hexdigest(),
                  hashlib.md5(b).hexdigest()) for f, b in files.items()))


def leftovers(root: Path) -> list:
    """Every file under ``root`` (relative paths), temporary ones included; Keras' own config
    file (written when a process imports keras with this KERAS_HOME) aside."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.name != "keras.json")


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10", "cifar100", "svhn"])
def test_fetch_then_load_gives_the_arrays_served(origin, monkeypatch, rng, capsys, name,
                                                 tmp_path):
    files, expected = make_dataset(name, rng)
    serve(origin, monkeypatch, name, files)
    assert D.loaders.locate(name) is None
    with pytest.raises(D.DatasetUnavailableError, match=f"python -m cna_tf.data.fetch {name}"):
        D.load(name)
    assert fetch.main([name]) == 0
    ds = D.load(name)
    for got, want in zip((ds.x_train, ds.y_train, ds.x_test, ds.y_test), expected):
        np.testing.assert_array_equal(got.reshape(want.shape), want)
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape[1:] in ((28, 28, 1), (32, 32, 3))
    assert all(origin.hits[f] == 1 for f in files)
    assert not [f for f in leftovers(tmp_path) if f.endswith(".part") or ".tmp" in f]
    # already here: nothing is downloaded again
    capsys.readouterr()
    assert fetch.main([name]) == 0
    assert "nothing downloaded" in capsys.readouterr().err
    assert all(origin.hits[f] == 1 for f in files)
    if name == "cifar100":
        coarse = D.load(name, label_mode="coarse")
        np.testing.assert_array_equal(coarse.y_test, expected[3] // 5)


def test_cifar_is_extracted_as_keras_3_caches_it(origin, monkeypatch, rng, tmp_path):
    files, _ = make_dataset("cifar10", rng)
    serve(origin, monkeypatch, "cifar10", files)
    assert fetch.main(["cifar10"]) == 0
    datasets = tmp_path / "keras_home" / "datasets"
    assert (datasets / "cifar-10-python.tar.gz").is_file()
    extracted = datasets / "cifar-10-batches-py-target" / "cifar-10-batches-py"
    assert (extracted / "test_batch").is_file()


def test_config_fetches_every_dataset_it_names(origin, monkeypatch, rng, tmp_path, capsys):
    files, _ = make_dataset("fashion_mnist", rng)
    serve(origin, monkeypatch, "fashion_mnist", files)
    config = tmp_path / "two.yaml"
    config.write_text("name: two\ncells:\n  - {arch: mlp, dataset: [digits, fashion-mnist]}\n")
    assert fetch.main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "digits: bundled with scikit-learn" in out and "fashion_mnist: " in out
    assert D.load("fashion_mnist").x_test.shape == (5, 28, 28, 1)


def test_a_hash_mismatch_keeps_nothing_and_says_what_was_expected(origin, monkeypatch, rng,
                                                                   tmp_path, capsys):
    files, _ = make_dataset("svhn", rng)
    serve(origin, monkeypatch, "svhn", files, sha="0" * 64)
    assert fetch.main(["svhn"]) == 1
    err = capsys.readouterr().err
    assert "train_32x32.mat" in err and "expected " + "0" * 64 in err
    assert f"sha256 {hashlib.sha256(files['train_32x32.mat']).hexdigest()}" in err
    assert "not fetched: svhn" in err
    assert leftovers(tmp_path) == []
    assert D.loaders.locate("svhn") is None


def test_a_truncated_download_keeps_nothing(origin, monkeypatch, rng, tmp_path, capsys):
    files, _ = make_dataset("cifar100", rng)
    serve(origin, monkeypatch, "cifar100", files)
    origin.truncate.add("cifar-100-python.tar.gz")
    assert fetch.main(["cifar100"]) == 1
    err = capsys.readouterr().err
    n = len(files["cifar-100-python.tar.gz"])
    assert f"cifar-100-python.tar.gz from {origin.url}cifar-100-python.tar.gz is truncated" in err
    assert f"{n} of the {n + 4096} bytes" in err
    assert leftovers(tmp_path) == []


def test_a_cifar_pickle_carrying_code_is_refused_and_not_kept(origin, monkeypatch, rng, tmp_path,
                                                              capsys):
    files, _ = make_dataset("cifar100", rng)
    evil = pickle.dumps({b"data": _Evil()}, protocol=2)
    with tarfile.open(fileobj=io.BytesIO(files["cifar-100-python.tar.gz"])) as t:
        members = {m.name: t.extractfile(m).read() for m in t.getmembers()}
    members["cifar-100-python/test"] = evil
    serve(origin, monkeypatch, "cifar100", {"cifar-100-python.tar.gz": _tar_gz(members)})
    assert fetch.main(["cifar100"]) == 1
    err = capsys.readouterr().err
    assert "refusing to unpickle posix.system" in err or "refusing to unpickle os.system" in err
    assert leftovers(tmp_path) == []


def test_an_interrupted_download_keeps_nothing(origin, tmp_path):
    """A real Ctrl-C (SIGINT) while the body is half sent: no file, no temporary file."""
    body = _idx_gz(np.zeros((2000, 28, 28), np.uint8)) + os.urandom(200_000)
    origin.files["train-images-idx3-ubyte.gz"] = body
    origin.stall.add("train-images-idx3-ubyte.gz")
    env = dict(os.environ, KERAS_BACKEND="numpy", PYTHONUNBUFFERED="1")
    # SIGINT at its default in the child: a test run started in the background by a
    # non-interactive shell (nohup ... &, some CI runners) ignores SIGINT, a child inherits the
    # ignored disposition, and Python then installs no KeyboardInterrupt handler at all
    proc = subprocess.Popen([sys.executable, "-m", "cna_tf.data.fetch", "fashion_mnist"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        keras = tmp_path / "keras_home"
        while not [p for p in keras.rglob("*.part") if p.stat().st_size > 0]:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert "cna_tf.data.fetch: fashion_mnist: interrupted; nothing of it was kept" in err
    assert leftovers(tmp_path) == []


def test_a_download_killed_outright_is_cleaned_up_by_the_next_fetch(origin, monkeypatch, rng,
                                                                     tmp_path, capsys):
    """A real SIGKILL while the body is half sent leaves the hidden .part file (no handler can
    run); the next fetch of that file removes it, says so, and downloads the file whole."""
    files, expected = make_dataset("fashion_mnist", rng)
    name = "train-images-idx3-ubyte.gz"
    origin.files[name] = files[name] + os.urandom(200_000)   # big enough to stall half-way
    origin.stall.add(name)
    env = dict(os.environ, KERAS_BACKEND="numpy", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "cna_tf.data.fetch", "fashion_mnist"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    keras = tmp_path / "keras_home"
    try:
        while not [p for p in keras.rglob("*.part") if p.stat().st_size > 0]:
            assert proc.poll() is None, "the fetch ended before the body was half sent"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (part,) = [p for p in keras.rglob("*.part")]
    assert part.name == f".{name}.{proc.pid}.part" and proc.returncode == -signal.SIGKILL
    origin.stall.clear()
    origin.release.set()
    serve(origin, monkeypatch, "fashion_mnist", files)
    capsys.readouterr()
    assert fetch.main(["fashion_mnist"]) == 0
    err = capsys.readouterr().err
    assert f"removed {part} (" in err and f"an earlier download of {name} was killed" in err
    assert not part.exists() and not [f for f in leftovers(tmp_path) if f.endswith(".part")]
    np.testing.assert_array_equal(D.load("fashion_mnist").x_train.reshape(expected[0].shape),
                                  expected[0])


def test_a_part_file_of_a_running_download_is_left_alone(tmp_path):
    """Another fetch still writing its .part file (its process alive) keeps it; a dead
    process's or an unnamed one's goes."""
    dest = tmp_path / "blob.bin"
    mine = tmp_path / f".blob.bin.{os.getppid()}.part"          # a live process: the parent
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".blob.bin.{dead.pid}.part"
    other = tmp_path / ".other.bin.1.part"                     # another file's: not ours
    for p in (mine, stale, other):
        p.write_bytes(b"x")
    out = io.StringIO()
    assert dl.remove_stale_parts(dest, out) == [stale]
    assert mine.exists() and other.exists() and not stale.exists()
    assert out.getvalue().startswith(f"removed {stale} (1 bytes): an earlier download")


def test_progress_is_printed_as_percentages(origin, monkeypatch, tmp_path):
    body = os.urandom(10_000)
    origin.files["blob.bin"] = body
    monkeypatch.setattr(dl, "_CHUNK", 1000)
    remote = dl.Remote("blob.bin", "https://origin.invalid/", hashlib.sha256(body).hexdigest())
    out = io.StringIO()
    dl.download(remote, tmp_path / "blob.bin", out=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == f"downloading {origin.url}blob.bin -> {tmp_path / 'blob.bin'} (0.0 MB)"
    assert [ln.split(":")[1].split("%")[0].strip() for ln in lines[1:-1]] == \
        [str(p) for p in range(10, 100, 10)]
    assert "sha256 ok" in lines[-1]
    assert (tmp_path / "blob.bin").read_bytes() == body


def test_the_origin_is_used_without_a_mirror(monkeypatch):
    monkeypatch.delenv(dl.ENV_MIRROR, raising=False)
    assert [dl.url_of(r) for r in dl.SOURCES["svhn"]] == [
        "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
        "http://ufldl.stanford.edu/housenumbers/test_32x32.mat"]
    monkeypatch.setenv(dl.ENV_MIRROR, "http://127.0.0.1:1/m")
    assert dl.url_of(dl.SOURCES["cifar10"][0]) == "http://127.0.0.1:1/m/cifar-10-python.tar.gz"


def test_cifar_pins_are_the_ones_keras_datasets_uses():
    import keras

    src = Path(keras.__file__).parent / "src" / "datasets"
    for name, module in (("cifar10", "cifar10.py"), ("cifar100", "cifar100.py")):
        (remote,) = dl.SOURCES[name]
        text = (src / module).read_text()
        assert remote.sha256 in text and remote.origin + remote.name in text
    fashion = (src / "fashion_mnist.py").read_text()
    assert all(r.origin in fashion and r.name in fashion for r in dl.SOURCES["fashion_mnist"])


def test_imagenet32_says_what_to_download_and_the_loader_reads_it_there(tmp_path, monkeypatch,
                                                                         capsys, rng):
    monkeypatch.setenv("CNA_TF_DATA", str(tmp_path / "data"))
    assert fetch.main(["imagenet32"]) == 1
    err = capsys.readouterr().err
    folder = tmp_path / "data" / "imagenet32"
    assert "Imagenet32_train_npz.zip" in err and "Imagenet32_val_npz.zip" in err
    assert f"{folder}/" in err and "train_data_batch_1.npz" in err and "val_data.npz" in err
    # unzipped as told (into a subfolder, as a zip may hold one): load reads them
    sub = folder / "Imagenet32_train_npz"
    sub.mkdir(parents=True)
    images = {}
    for f in D.formats.IMAGENET32_FILES:
        x = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(1, 1001, 3)
        np.savez(sub / f, data=x.transpose(0, 3, 1, 2).reshape(3, -1), labels=y,
                 mean=np.zeros(3072))
        images[f] = (x, y - 1)
    ds = D.load("imagenet32")
    assert ds.num_classes == 1000 and ds.x_train.shape == (30, 32, 32, 3)
    np.testing.assert_array_equal(ds.x_test, images["val_data.npz"][0])
    np.testing.assert_array_equal(ds.y_test, images["val_data.npz"][1])
    np.testing.assert_array_equal(ds.x_train[:3], images["train_data_batch_1.npz"][0])


def test_nothing_to_fetch_for_bundled_datasets_and_unknown_names_fail(capsys):
    assert fetch.main(["digits", "gaussian"]) == 0
    assert "digits: bundled with scikit-learn" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        fetch.main(["cifar11"])
    assert "unknown dataset 'cifar11'" in capsys.readouterr().err
