"""Where each fetchable dataset comes from, and one download that never leaves a bad file behind.

`SOURCES` maps a dataset to the files it is made of (`Remote`: file name, origin folder, the
pinned sha256 and, where its publisher gives one, md5). The hashes and where each comes from:

* ``fashion_mnist``: the four gzipped IDX files from Keras' own origin
  (``https://storage.googleapis.com/tensorflow/tf-keras-datasets/``; ``keras.datasets`` pins no
  hash for them). sha256 and sizes: tensorflow-datasets' ``url_checksums/fashion_mnist.txt``;
  md5: Zalando's Fashion-MNIST README (also torchvision's ``FashionMNIST``).
* ``cifar10``, ``cifar100``: ``cifar-10-python.tar.gz`` and ``cifar-100-python.tar.gz`` from
  ``https://www.cs.toronto.edu/~kriz/``; sha256 as ``keras.datasets.cifar10`` / ``cifar100``
  pin it (Keras 3.15); md5: the CIFAR page (also torchvision's ``CIFAR10`` / ``CIFAR100``).
* ``svhn``: the cropped digits ``train_32x32.mat`` and ``test_32x32.mat`` from
  ``http://ufldl.stanford.edu/housenumbers/`` (no https there; the hashes carry the trust).
  sha256 and sizes: tensorflow-datasets' ``url_checksums/svhn_cropped.txt``; md5: torchvision's
  ``SVHN`` class. The origin publishes no hash of its own.

A download (`download`) writes to a hidden temporary name beside the destination, checks the
byte count against ``Content-Length``, the sha256 and md5, lets the caller check the content,
and only then renames it into place; anything else (a mismatch, a short body, an interrupt)
deletes the temporary file and raises :class:`DownloadError` naming the file and what was
expected. So the loader never reads a partial or unverified file. A download killed outright
(SIGKILL) cannot delete its temporary file: the next download of that file does, and says so
(`remove_stale_parts`).

Mirror: set ``CNA_TF_DATA_MIRROR`` to a base URL (``https://mirror.example/cna_tf/``, or
``http://127.0.0.1:8000/`` for a local copy) and every file is fetched from
``<mirror>/<file name>`` instead of its origin, with the same pinned hashes.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Dict, Optional, Tuple

__all__ = ["ENV_MIRROR", "Remote", "SOURCES", "DownloadError", "url_of", "download",
           "remove_stale_parts"]

#: The environment variable naming a base URL that replaces every origin (see the module doc).
ENV_MIRROR = "CNA_TF_DATA_MIRROR"

_KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
_CIFAR_ORIGIN = "https://www.cs.toronto.edu/~kriz/"
_SVHN_ORIGIN = "http://ufldl.stanford.edu/housenumbers/"


@dataclass(frozen=True)
class Remote:
    """One file of a dataset at its origin.

    Attributes:
        name: the file's name at the origin (and in a mirror, and on disk).
        origin: the folder URL it is fetched from (ends with ``/``).
        sha256: its pinned sha256 (hex).
        md5: its publisher's md5 (hex), checked too when given.
        size: its size in bytes when known (progress before ``Content-Length`` arrives).
    """

    name: str
    origin: str
    sha256: str
    md5: Optional[str] = None
    size: Optional[int] = None


#: dataset -> its files. Tests replace entries (with their own tiny files' hashes); nothing else
#: should.
SOURCES: Dict[str, Tuple[Remote, ...]] = {
    "fashion_mnist": (
        Remote("train-images-idx3-ubyte.gz", _KERAS_ORIGIN,
               "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
               "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26421880),
        Remote("train-labels-idx1-ubyte.gz", _KERAS_ORIGIN,
               "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
               "25c81989df183df01b3e8a0aad5dffbe", 29515),
        Remote("t10k-images-idx3-ubyte.gz", _KERAS_ORIGIN,
               "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
               "bef4ecab320f06d8554ea6380940ec79", 4422102),
        Remote("t10k-labels-idx1-ubyte.gz", _KERAS_ORIGIN,
               "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
               "bb300cfdad3c16e7a12a480ee83cd310", 5148),
    ),
    "cifar10": (
        Remote("cifar-10-python.tar.gz", _CIFAR_ORIGIN,
               "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
               "c58f30108f718f92721af3b95e74349a", 170498071),
    ),
    "cifar100": (
        Remote("cifar-100-python.tar.gz", _CIFAR_ORIGIN,
               "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
               "eb9058c3a382ffc7106e4002c42a8d85"),
    ),
    "svhn": (
        Remote("train_32x32.mat", _SVHN_ORIGIN,
               "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8",
               "e26dedcc434d2e4c54c9b2d4a06d8373", 182040794),
        Remote("test_32x32.mat", _SVHN_ORIGIN,
               "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b",
               "eb5a983be6a315427106f1b164d9cef3", 64275384),
    ),
}


class DownloadError(RuntimeError):
    """A file could not be fetched intact; nothing was left where the loader reads."""


def url_of(remote: Remote) -> str:
    """The URL ``remote`` is fetched from: ``$CNA_TF_DATA_MIRROR/<name>``, else its origin."""
    mirror = os.environ.get(ENV_MIRROR, "").strip()
    base = (mirror.rstrip("/") + "/") if mirror else remote.origin
    return base + remote.name


_CHUNK = 1 << 20


def download(remote: Remote, dest: Path, check: Optional[Callable[[Path], None]] = None,
             out: Optional[IO[str]] = None, timeout: float = 60.0) -> Path:
    """Fetches ``remote`` to ``dest``, verified; ``dest`` appears only when everything matched.

    Prints ``<name>: NN% (x of y MB)`` lines every 10 % when the size is known (else one line
    at the end).

    Args:
        remote: the file, its origin and hashes (`url_of` gives the URL).
        dest: where the loader reads it.
        check: a reader of the content, called on the verified temporary file before the
            rename; its exception (a pickle carrying code, a wrong format) rejects the file.
        out: where progress lines go (default stderr).
        timeout: seconds a connection may stay silent.

    Raises:
        DownloadError: the server failed, the body was short, a hash differed, or ``check``
            rejected the content; the message names the file, the URL and what was expected.
    """
    out = out if out is not None else sys.stderr
    url = url_of(remote)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(dest, out)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    got = 0
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as f:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else remote.size
                shown, t0 = 0, time.monotonic()
                print(f"downloading {url} -> {dest}" + (f" ({total / 1e6:.1f} MB)" if total
                                                         else ""), file=out, flush=True)
                while True:
                    block = resp.read1(_CHUNK)
                    if not block:
                        break
                    f.write(block)
                    sha.update(block)
                    md5.update(block)
                    got += len(block)
                    if total and got * 10 // total > shown and got < total:
                        shown = got * 10 // total
                        print(f"  {remote.name}: {got * 100 // total}% ({got / 1e6:.1f} of "
                              f"{total / 1e6:.1f} MB)", file=out, flush=True)
                if length and length.isdigit() and got != int(length):
                    raise DownloadError(
                        f"{remote.name} from {url} is truncated: {got} of the {length} bytes the "
                        f"server announced arrived. Nothing was kept at {dest}; run the fetch "
                        "again.")
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise DownloadError(f"{remote.name}: fetching {url} failed after {got} bytes "
                                f"({type(e).__name__}: {e}). Nothing was kept at {dest}; run "
                                f"the fetch again{_mirror_hint()}.") from None
        except http.client.HTTPException as e:
            raise DownloadError(f"{remote.name}: the download from {url} broke off after {got} "
                                f"bytes ({type(e).__name__}: {e}). Nothing was kept at {dest}; "
                                "run the fetch again.") from None
        bad = []
        if sha.hexdigest() != remote.sha256:
            bad.append(f"sha256 {sha.hexdigest()}, expected {remote.sha256}")
        if remote.md5 and md5.hexdigest() != remote.md5:
            bad.append(f"md5 {md5.hexdigest()}, expected {remote.md5}")
        if bad:
            raise DownloadError(f"{remote.name} from {url} ({got} bytes) is not the expected "
                                f"file: {'; '.join(bad)}. Nothing was kept at {dest} (a damaged "
                                "download, or the origin changed the file).")
        if check is not None:
            try:
                check(tmp)
            except Exception as e:
                raise DownloadError(f"{remote.name} from {url} matched its hashes but cannot be "
                                    f"read safely ({type(e).__name__}: {e}). Nothing was kept "
                                    f"at {dest}.") from None
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    print(f"  {remote.name}: {got / 1e6:.1f} MB in {time.monotonic() - t0:.0f} s, sha256 ok",
          file=out, flush=True)
    return dest


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_parts(dest: Path, out: Optional[IO[str]] = None) -> list:
    """Deletes the temporary files an earlier download of ``dest`` left behind, and says so.

    A download killed outright (SIGKILL, a power cut) cannot delete its
    ``.<name>.<pid>.part`` file; the next download of the same file does, unless the process
    that wrote it is still running (then it is another fetch at work, and its file is left).

    Args:
        dest: the file being downloaded.
        out: where the one line per removed file goes (default stderr).

    Returns:
        The paths removed.
    """
    out = out if out is not None else sys.stderr
    removed = []
    for part in sorted(Path(dest).parent.glob(f".{Path(dest).name}.*.part")):
        pid = part.name[len(Path(dest).name) + 2:-len(".part")]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        try:
            size = part.stat().st_size
            part.unlink()
        except FileNotFoundError:  # its own process cleaned up meanwhile
            continue
        removed.append(part)
        print(f"removed {part} ({size} bytes): an earlier download of {Path(dest).name} was "
              "killed before it finished; downloading it again", file=out, flush=True)
    return removed


def _mirror_hint() -> str:
    if os.environ.get(ENV_MIRROR, "").strip():
        return f" (from the mirror {ENV_MIRROR}={os.environ[ENV_MIRROR]})"
    return f" (or set {ENV_MIRROR} to a mirror holding the file)"
