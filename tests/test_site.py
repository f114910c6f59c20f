"""The documentation site, checked like code (mkdocs.yml, `make docs`, `make docs-serve`).

`make docs` runs once per test session (this module's ``site`` fixture, into a temporary
``SITE_DIR``): a strict MkDocs build, so a broken link, a page missing from the nav, a reference
to a name that does not exist or a failing tutorial cell fails it; the tutorial notebook
(`examples/tutorial.ipynb`) is executed during that build. The built site is then served on
127.0.0.1 and opened in headless Chromium (as tests/test_ui.py drives it): the home page, a
guide and `CNACallback`'s reference page must render with their code blocks and navigation, and
the tutorial with the outputs of its run.
"""
from __future__ import annotations

import functools
import http.server
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from _servers import ROOT, _stop, free_port, headless_chromium

VENV_BIN = Path(sys.executable).parent
# what Chromium must find in the site's navigation tabs (mkdocs.yml's nav)
SECTIONS = ("Getting started", "Guides", "Results", "Reference", "Development")


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "CNA_TF_DOCS", "SITE_DIR", "DOCS_PORT"))
           and k not in ("PYTEST_CURRENT_TEST", "MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """`make docs` into a temporary folder, once: (site folder, its output, seconds)."""
    out = tmp_path_factory.mktemp("site") / "site"
    start = time.monotonic()
    proc = subprocess.run(["make", "--no-print-directory", "docs", f"SITE_DIR={out}"], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - start
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"make docs exited {proc.returncode}:\n{log[-6000:]}"
    return out, log, seconds


@pytest.mark.slow
def test_make_docs_builds_every_page_strict(site):
    out, log, seconds = site
    print(f"make docs: {seconds:.1f} s")
    assert "mkdocs build --strict" in log
    assert not re.search(r"^WARNING\s+-", log, re.M), log[-4000:]
    for page in ("index.html", "getting-started/index.html", "keras/index.html",
                 "library/index.html", "scoring/index.html", "results/index.html",
                 "results/gap_study/index.html", "reference/callback/index.html",
                 "reference/ranking/index.html", "tutorial/index.html", "testing/index.html"):
        assert (out / page).is_file(), page
    # every name of SPEC §6 and §8-§11 has its entry in the reference, from its docstring
    reference = "".join(p.read_text() for p in (out / "reference").glob("*/index.html"))
    for name in ("cna_tf.alpha", "cna_tf.compression_alpha", "cna_tf.ActivationProbe",
                 "cna_tf.ActivationProbe.layer_names", "cna_tf.ActivationProbe.layer_sums",
                 "cna_tf.ActivationProbe.layer_outputs",
                 "cna_tf.beta", "cna_tf.cna", "cna_tf.cna_area", "cna_tf.margins",
                 "cna_tf.margin", "cna_tf.evaluate", "cna_tf.baselines.compute",
                 "cna_tf.baselines.capture_initial_weights", "cna_tf.models.build",
                 "cna_tf.data.load", "cna_tf.callback.CNACallback", "cna_tf.flatness.compute",
                 "cna_tf.ranking.conditional_mutual_information", "cna_tf.ranking.bootstrap",
                 "cna_tf.ranking.sign_errors", "cna_tf.scoring.resolve"):
        assert f'id="{name}"' in reference, name


def _build_one_page(tmp_path: Path, page: str, nav: str = "") -> str:
    """Builds the project's own mkdocs.yml (INHERIT) on a one-page docs folder; its output."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(page)
    (tmp_path / "mkdocs.yml").write_text(
        f"INHERIT: {ROOT / 'mkdocs.yml'}\ndocs_dir: docs\nnav:\n  - Home: index.md\n{nav}")
    proc = subprocess.run([str(VENV_BIN / "mkdocs"), "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=_env(NO_MKDOCS_2_WARNING="1"))
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    return log


@pytest.mark.slow
def test_the_strict_build_fails_on_a_broken_link_or_a_missing_page(tmp_path):
    log = _build_one_page(tmp_path, "See [the missing page](nowhere.md).\n",
                          "  - Missing: missing.md\n")
    assert "nowhere.md" in log and "missing.md" in log, log[-3000:]


@pytest.mark.slow
def test_the_strict_build_fails_on_a_name_that_does_not_exist(tmp_path):
    # cna_tf.alpha first: it must resolve, so the failure is the missing name's, not cna_tf's
    log = _build_one_page(tmp_path, "::: cna_tf.alpha\n\n::: cna_tf.no_such_name\n")
    assert "cna_tf.no_such_name" in log, log[-3000:]


def test_the_tutorial_is_committed_without_outputs():
    notebook = ROOT / "examples" / "tutorial.ipynb"
    cells = json.loads(notebook.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    # the site shows this very file
    assert (ROOT / "docs" / "tutorial.ipynb").resolve() == notebook.resolve()


def test_the_lock_pins_the_docs_extra():
    """`make install` installs requirements.lock as a whole: the docs extra must be in it."""
    tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads pyproject.toml")
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["docs"]
    pins = dict(line.split("==", 1) for line in (ROOT / "requirements.lock").read_text()
                .splitlines() if "==" in line and not line.startswith("#"))
    pins = {canonicalize_name(name): version for name, version in pins.items()}
    for spec in extra:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (docs extra) is not in requirements.lock"
        assert req.specifier.contains(pins[name]), (spec, pins[name])
    assert "mkdocstrings-python" in pins   # mkdocstrings[python]'s handler


def test_every_readme_link_points_at_a_file():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert len(local) >= 10, local
    assert not [link for link in local if not (ROOT / link).exists()]


@pytest.mark.slow
def test_the_readme_callback_quickstart_runs(tmp_path):
    """README's first Python block as written, with 3 epochs instead of 20."""
    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    assert "cna_tf.CNACallback(" in block and "epochs=20" in block
    script = block.replace("epochs=20", "epochs=3") + (
        "m = cb.history[max(cb.history)]\n"
        "print('EPOCHS', sorted(cb.history), 'CNA-M', m['cna_margin'], 'GAP', m['gen_gap'])\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env=_env(TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = re.search(r"EPOCHS \[0, 1, 2, 3\] CNA-M (\S+) GAP (\S+)", proc.stdout)
    assert m and all(math.isfinite(float(v)) for v in m.groups()), proc.stdout[-2000:]


@pytest.mark.slow
def test_the_tutorial_ran_in_the_build(site):
    """Its outputs are in the page: the epoch table, the comparison, the figures, no error."""
    html = (site[0] / "tutorial" / "index.html").read_text()
    # printed by the cells (the source never has these)
    assert re.search(r"epoch\s+loss\s+cna_train\s+cna_test", html), "no epoch table"
    assert re.search(r"\n\s+12\s+[0-9.]+\s+[-0-9.]+\s+[-0-9.]+\s+[-0-9.]+", html), "no epoch 12"
    assert re.search(r"cna_margin\s+ranks them (as their gap|the other way)", html)
    assert len(re.findall(r"data:image/png;base64", html)) >= 2  # Fig. 4 and Fig. 3
    assert "Traceback" not in html


# -- in Chromium ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(site):
    """The built site on 127.0.0.1 (a static server in a thread); its URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(site[0]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with headless_chromium(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


def _open(driver, url: str):
    """Opens a page; returns (its tab labels, its rendered code blocks' text)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".md-tabs__link"))
    tabs = [t.get_attribute("textContent").strip()
            for t in driver.find_elements(By.CSS_SELECTOR, ".md-tabs__link")]
    blocks = [b.text for b in driver.find_elements(By.CSS_SELECTOR, ".highlight pre, pre code")
              if b.is_displayed() and b.text.strip()]
    return tabs, blocks


@pytest.mark.slow
def test_the_site_renders_in_chromium(served, browser):
    from selenium.webdriver.common.by import By

    tabs, blocks = _open(browser, served + "/")
    assert browser.title.startswith("cna_tf"), browser.title
    assert all(section in tabs for section in SECTIONS), tabs
    assert any("make demo" in b and "make test" in b for b in blocks), blocks
    assert "does not predict the generalization gap" in \
        browser.find_element(By.CSS_SELECTOR, "article").text

    # a guide: its code blocks, highlighted, and the sidebar with its sibling guides
    tabs, blocks = _open(browser, served + "/library/")
    assert any("cna_tf.CNACallback(" in b for b in blocks), blocks
    sidebar = browser.find_element(By.CSS_SELECTOR, "nav.md-nav--primary").get_attribute(
        "textContent")
    assert "The Keras callback" in sidebar and "Pipelines" in sidebar, sidebar[:2000]
    # highlighted by Pygments: the code is split into token spans
    assert browser.find_elements(By.CSS_SELECTOR, ".highlight pre code span")

    # CNACallback's reference: heading, signature, parameters table and example, from the
    # docstring
    tabs, blocks = _open(browser, served + "/reference/callback/")
    heading = browser.find_element(By.ID, "cna_tf.callback.CNACallback")
    assert heading.is_displayed() and "CNACallback" in heading.text
    article = browser.find_element(By.CSS_SELECTOR, "article").text
    assert "train_data" in article and "full_every" in article and "max_samples" in article
    assert any("model.fit(" in b for b in blocks), blocks   # the docstring's Examples section
    assert "Reference" in tabs

    # the tutorial, with the outputs of the run during the build
    tabs, blocks = _open(browser, served + "/tutorial/")
    text = browser.find_element(By.CSS_SELECTOR, "article").text
    assert re.search(r"cna_margin\s+ranks them", text), text[:3000]
    images = [i for i in browser.find_elements(By.CSS_SELECTOR, "article img")
              if i.get_attribute("naturalWidth") not in (None, "0")]
    assert len(images) >= 2


# -- make docs-serve ------------------------------------------------------------------------------

@pytest.mark.slow
def test_make_docs_serve_serves_the_site_on_loopback(tmp_path):
    port = free_port()
    proc = subprocess.Popen(["make", "--no-print-directory", "docs-serve", f"DOCS_PORT={port}"],
                            cwd=ROOT, env=_env(CNA_TF_DOCS_EXECUTE="false"),
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    body = ""
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    body = r.read().decode()
                break
            except OSError:
                time.sleep(1)
    finally:
        _stop(proc, signal.SIGTERM, group=True)
        out = proc.communicate(timeout=30)[0]
    assert "<title>cna_tf</title>" in body, out[-4000:]
    assert f"--dev-addr 127.0.0.1:{port}" in out, out[-4000:]
