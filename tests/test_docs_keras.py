"""docs/keras.md as a user reads it: the script it shows is examples/keras_mnist_convnet.py line
for line, its command runs (with a small epoch count added), and every other code block runs."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "keras.md"
FENCE = re.compile(r"^(<!-- file: (?P<file>\S+) -->\n)?```(?P<lang>\w+)\n(?P<body>.*?)^```$",
                   re.S | re.M)


def blocks():
    return [(m["file"], m["lang"], m["body"]) for m in FENCE.finditer(DOC.read_text())]


def test_the_doc_shows_the_example_file_verbatim():
    shown = [(f, body) for f, lang, body in blocks() if f]
    assert [f for f, _ in shown] == ["examples/keras_mnist_convnet.py"]
    assert shown[0][1] == (ROOT / shown[0][0]).read_text()


def test_every_code_block_is_covered_here():
    kinds = [(f is not None, lang) for f, lang, _ in blocks()]
    assert kinds == [(False, "bash"), (True, "python"), (False, "python"), (False, "python"),
                     (False, "python"), (False, "python")]


@pytest.mark.slow
def test_the_documented_command_runs_the_example(tmp_path):
    commands = [body.strip() for f, lang, body in blocks() if lang == "bash"]
    assert commands == [".venv/bin/python examples/keras_mnist_convnet.py"]
    argv = shlex.split(commands[0]) + ["2"]  # a size parameter: 2 epochs instead of 15
    if not (ROOT / argv[0]).exists():  # the project's venv under another name
        argv[0] = sys.executable
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db")
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "4000 train samples" in out and "1000 test samples" in out
    assert re.search(r"CNACallback epoch 0: cna_train=\S+, .*cna_test=", out)
    assert re.search(r"CNACallback epoch 2: .*cna_area=", out)  # the final full snapshot
    values = dict(re.findall(r"^(cna_test|cna_area|gen_gap): (\S+)$", out, re.M))
    assert set(values) == {"cna_test", "cna_area", "gen_gap"}
    assert all(v != "nan" for v in values.values())
    assert "layer_outputs['conv2d']: shape (8, 26, 26, 32)" in out
    assert "layer_outputs['conv2d_1']: shape (8, 11, 11, 64)" in out


@pytest.mark.parametrize("index", [2, 3, 4, 5])
def test_the_other_code_blocks_run(index, capsys):
    f, lang, body = blocks()[index]
    assert lang == "python" and f is None
    exec(compile(body, f"{DOC.name} block {index}", "exec"), {"__name__": "__doc_block__"})
    if index == 2:
        assert "smoothed or mixed labels?" in capsys.readouterr().out
    if index == 5:  # Subclassed models: the probe layers in call order, finite figures
        out = capsys.readouterr().out
        assert "['stem', 'block/dense']" in out and "'cna_test': " in out
        assert "nan" not in out.split("'cna_test'")[1]
