"""Steps that never run a model start without Keras (and so without TensorFlow, ~5 s of CPU).

`compare`, the grid's parent (its config check names architectures and datasets), `score`'s
imports, `python -m cna_tf.tracking url` and `python -m cna_tf.data.fetch` each run in a fresh
process many times a session; `import cna_tf` and the keras-free measures (alpha, beta, CNA) do
not need Keras either. Each case runs in a subprocess so that this test process's imports do
not count.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "cna_tf": "import cna_tf; cna_tf.alpha; cna_tf.cna_margin",
    "compare": "import compare",
    "grid": "import grid, cells; cells._check_names({'arch': 'ResNet-18', 'dataset': 'digits'})",
    "score": "import score",
    "tracking": "import cna_tf.tracking, cna_tf.ranking, cna_tf.scoring",
    "fetch": "import cna_tf.data.fetch",
    "names": "from cna_tf import models, suite, data; models.canonical_name('vgg18'); "
             "data.canonical_name('mnist'); suite.OPTIMIZATION",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_keras(case):
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'pipelines')!r}); {CASES[case]}; "
            "import json; print(json.dumps(sorted(m for m in ('keras', 'tensorflow', 'jax', "
            "'torch') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [], case


def test_lazy_names_resolve():
    """The names `cna_tf` loads on first use are the modules' own, and `dir` lists them."""
    import cna_tf
    from cna_tf import evaluation, probe

    assert cna_tf.ActivationProbe is probe.ActivationProbe
    assert cna_tf.UntraceableModelError is probe.UntraceableModelError
    assert cna_tf.evaluate is evaluation.evaluate
    assert set(cna_tf.__all__) <= set(dir(cna_tf))
    package = ROOT / "cna_tf"
    for name in sorted(p.stem for p in package.glob("*.py") if p.stem != "__init__") + [
            p.name for p in package.iterdir() if (p / "__init__.py").exists()]:
        assert getattr(cna_tf, name).__name__ == f"cna_tf.{name}"   # every submodule
    with pytest.raises(AttributeError, match="no_such_name"):
        cna_tf.no_such_name
