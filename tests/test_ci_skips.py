"""Under CI (CI=true) a test that needs Chromium or PostgreSQL fails when they are missing; on a
developer's machine it skips (issue 22, item 4). The helper that decides, and its wiring into
tests/test_ui.py and tests/_servers.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import _servers
from _servers import chromium_missing, missing, require_module, under_ci

ROOT = Path(__file__).resolve().parent.parent
Skipped, Failed = pytest.skip.Exception, pytest.fail.Exception


@pytest.mark.parametrize("value, ci", [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), (" on ", True),
    ("false", False), ("0", False), ("", False), ("no", False), (None, False),
])
def test_under_ci_reads_the_ci_variable(value, ci, monkeypatch):
    env = {} if value is None else {"CI": value}
    assert under_ci(env) is ci
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert under_ci() is ci                      # default: os.environ


def test_missing_skips_locally_and_fails_under_ci():
    with pytest.raises(Skipped, match="chromium missing: apt-get"):
        missing("chromium missing: apt-get install -y chromium", env={})
    with pytest.raises(Skipped):
        missing("x", env={"CI": "false"})
    with pytest.raises(Failed, match="CI=true and chromium missing: apt-get"):
        missing("chromium missing: apt-get install -y chromium", env={"CI": "true"})


def test_require_module_imports_skips_or_fails():
    assert require_module("json", "stdlib", env={"CI": "true"}) is sys.modules["json"]
    with pytest.raises(Skipped, match="no_such_module_cna_tf.*pip install it"):
        require_module("no_such_module_cna_tf", "pip install it", env={})
    with pytest.raises(Failed, match="no_such_module_cna_tf"):
        require_module("no_such_module_cna_tf", "pip install it", env={"CI": "true"})


def test_chromium_missing_names_what_is_absent(tmp_path):
    present = tmp_path / "bin"
    present.write_text("")
    assert chromium_missing(str(present), str(present)) is None
    why = chromium_missing(str(tmp_path / "nope"), str(present))
    assert str(tmp_path / "nope") in why and "apt-get install -y chromium chromium-driver" in why


@pytest.mark.parametrize("ci, outcome", [("true", Failed), ("", Skipped)])
def test_postgres_without_its_programs_fails_under_ci(monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(_servers, "pg_bin", lambda name: None)
    with pytest.raises(outcome, match="PostgreSQL server programs"):
        with _servers.postgres():
            pass


@pytest.mark.parametrize("ci", ["true", ""])
def test_ui_tests_without_chromium_fail_under_ci(tmp_path, ci):
    """The real UI tests in a child pytest, pointed at a Chromium that does not exist: errors
    (the browser fixture fails) under CI, skips otherwise."""
    env = dict(os.environ, CI=ci, CNA_TF_CHROMIUM=str(tmp_path / "no-chromium"),
               PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:xdist",
         "-o", "addopts=", "--rootdir", str(ROOT), str(ROOT / "tests" / "test_ui.py")],
        env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    summary = out.strip().splitlines()[-1]
    assert "passed" not in summary, out[-3000:]
    if ci:
        assert proc.returncode != 0 and "error" in summary and "skipped" not in summary, out
        assert "CI=true and " + str(tmp_path / "no-chromium") in out
    else:
        assert proc.returncode == 0 and "skipped" in summary and "error" not in summary, out
        assert str(tmp_path / "no-chromium") + " / " in out   # the skip reason names it


# -- .ci/run: its install step, with stub programs on PATH (nothing is installed, make is a stub)

def _stubs(tmp_path, apt_rc):
    bin_dir = tmp_path / "stubs"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for name, body in (("id", 'echo 0'),                                  # "root"
                       ("apt-get", f'echo "apt-get $*" >> {log}; exit {apt_rc}'),
                       ("make", f'echo "make $* CI=$CI" >> {log}'),
                       ("initdb", "exit 0")):
        f = bin_dir / name
        f.write_text(f"#!/bin/sh\n{body}\n")
        f.chmod(0o755)
    return bin_dir, log


def _ci_run(tmp_path, bin_dir, chromium, **env):
    full = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", CNA_TF_CHROMIUM=str(chromium),
                CNA_TF_CHROMEDRIVER=str(chromium))
    full.pop("CI", None)                                       # as a CI that does not set it
    full.update(env)
    return subprocess.run(["bash", str(ROOT / ".ci" / "run")], env=full, capture_output=True,
                          text=True, timeout=60)


def test_ci_run_fails_when_the_install_fails(tmp_path):
    bin_dir, log = _stubs(tmp_path, apt_rc=100)
    proc = _ci_run(tmp_path, bin_dir, tmp_path / "no-chromium")
    assert proc.returncode == 1
    assert "apt-get install chromium chromium-driver failed" in proc.stderr
    assert "make" not in log.read_text()                       # the tests never ran


def test_ci_run_fails_when_the_install_leaves_a_program_missing(tmp_path):
    bin_dir, log = _stubs(tmp_path, apt_rc=0)
    proc = _ci_run(tmp_path, bin_dir, tmp_path / "no-chromium")
    assert proc.returncode == 1
    assert "still missing after the install" in proc.stderr
    assert "apt-get" in log.read_text() and "make" not in log.read_text()


@pytest.mark.parametrize("ci, want", [(None, "true"), ("1", "1")])
def test_ci_run_exports_ci_then_runs_make_test_and_demo(tmp_path, ci, want):
    bin_dir, log = _stubs(tmp_path, apt_rc=100)
    chromium = tmp_path / "chromium"
    chromium.write_text("#!/bin/sh\n")
    chromium.chmod(0o755)
    proc = _ci_run(tmp_path, bin_dir, chromium, **({} if ci is None else {"CI": ci}))
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().splitlines() == [f"make test CI={want}", f"make demo CI={want}"]
