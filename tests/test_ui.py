"""The MLflow UI as the README sends a user to it: the link `make demo` prints, in Chromium.

`make demo` ends with ``Browse the runs: make ui, then open <link>``. Each test here starts there:
a sqlite store holding an experiment ``cna_tf-demo`` (a grid logged by hand, or one trained by
pipelines/grid.py and compared by pipelines/compare.py), ``mlflow server`` on 127.0.0.1, and the
link printed by the last line of the ``demo`` recipe itself (``make -n demo UI_PORT=<port>``
gives that line; bash runs it against the test's store, as `make demo` would). Headless
Chromium, driven by chromedriver through Selenium, opens that link and nothing else, and the
test fails if the page is MLflow 3.17's GenAI overview (where it opens an experiment by
default) instead of the runs. There the experiment's ``cna_tf`` view (cna_tf/tracking.py
`runs_view_state`) must show every grid cell with its ``gen_gap``, ``cna_margin`` and ``l2``
without a click, and "Chart view" one point per cell of ``cna_margin`` against ``gen_gap``.
Screenshots are kept in ``$CNA_TF_TEST_ARTIFACTS/ui/`` (default: the temp dir's
``cna_tf_test_artifacts/ui/``).
"""
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from _servers import (ROOT, artifacts_dir, chromium_missing, headless_chromium, missing,
                      mlflow_server)
from _shared_grid import N_CELLS
from _stores import sqlite_store

WIDTHS = (0.05, 0.1, 0.25, 0.5)
# final (step 2) values, exact in binary so the table shows them as logged
CNA_MARGIN = {0.05: 0.125, 0.1: 0.25, 0.25: 0.375, 0.5: -0.5}
L2 = {0.05: 10.5, 0.1: 11.25, 0.25: 12.75, 0.5: 14.0}
GEN_GAP = {0.05: 0.0625, 0.1: 0.125, 0.25: 0.25, 0.5: 0.5}
#: what only MLflow's GenAI overview shows (its charts and its pop-up)
GENAI_OVERVIEW = ("Token Usage", "Detect Issues in Your Traces", "Tokens per Trace")


def log_small_grid(tracking_uri: str) -> str:
    """A grid run and 4 finished child runs with cna_margin, l2 and gen_gap at steps 0..2."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.create_experiment("cna_tf-demo")
    parent = client.create_run(exp, run_name="grid-ui",
                               tags={"cna_tf.role": "grid", "cna_tf.config": "ui"})
    now = int(time.time() * 1000)
    for w in WIDTHS:
        run = client.create_run(exp, run_name=f"mlp-w{w:g}", tags={
            "mlflow.parentRunId": parent.info.run_id, "cna_tf.role": "train", "arch": "mlp",
            "dataset": "digits"})
        metrics = [Metric(name, final * (step + 1) / 3, now + step, step)
                   for step in range(3) for name, final in (("cna_margin", CNA_MARGIN[w]),
                                                            ("l2", L2[w]),
                                                            ("gen_gap", GEN_GAP[w]))]
        client.log_batch(run.info.run_id, metrics=metrics,
                         params=[Param("width", str(w)), Param("arch", "mlp"),
                                 Param("dataset", "digits")],
                         tags=[RunTag("cna_tf.snapshots", "0,1,2")])
        client.set_terminated(run.info.run_id)
    client.set_terminated(parent.info.run_id)
    return exp


def demo_link(tracking_uri: str, ui_url: str) -> str:
    """The link `make demo`'s last line prints for this store and a UI at ``ui_url``.

    The line is the demo recipe's own (``make -n demo`` prints it, expanded), run by bash with
    the store as `make demo` runs it; only the UI's port is the test server's.
    """
    port = int(ui_url.rsplit(":", 1)[1])
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("UI_", "MLFLOW_")) and k not in (
               "PYTEST_CURRENT_TEST", "MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    dry = subprocess.run(["make", "-n", "--no-print-directory", "demo", f"UI_PORT={port}"],
                         cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    last = dry.stdout.strip().splitlines()[-1]
    assert "cna_tf.tracking url" in last, last
    proc = subprocess.run(["bash", "-c", last], cwd=ROOT, env=dict(env, MLFLOW_TRACKING_URI=
                                                                     tracking_uri),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout.strip().splitlines()[-1]
    m = re.fullmatch(rf"Browse the runs: make ui UI_PORT={port}, then open ({re.escape(ui_url)}"
                     r"/#/experiments/\d+/runs\?\S+)", printed)
    assert m, printed
    return m.group(1)


def open_the_link(driver, wait, link: str, runs: set) -> None:
    """Opens ``link``; fails at once on the GenAI overview, else when ``runs`` are not listed."""
    from selenium.webdriver.common.by import By

    def landed(d):
        body = d.find_element(By.TAG_NAME, "body").text
        return any(s in body for s in GENAI_OVERVIEW) or runs <= set(_table(d))

    driver.get(link)
    wait.until(landed)
    body = driver.find_element(By.TAG_NAME, "body").text
    genai = [s for s in GENAI_OVERVIEW if s in body]
    assert not genai and "/overview" not in driver.current_url, (
        f"{link} shows MLflow's GenAI overview ({genai}, {driver.current_url}), not the runs")
    assert "/runs?" in driver.current_url and "workflowType=machine_learning" in \
        driver.current_url, driver.current_url
    assert runs <= set(_table(driver)), sorted(_table(driver))


def close_side_panels(driver) -> None:
    """Closes the assistant side panel, to see the whole table."""
    from selenium.webdriver.common.by import By

    for close in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
        if close.is_displayed():
            close.click()


@pytest.fixture(scope="session", autouse=True)
def _chromium_present():
    """Skips (fails under CI=true) before any session fixture is built when Chromium is missing:
    pytest builds session fixtures (the shared grid) before the function-scoped ``browser``,
    and test_ci_skips.py runs this file in a child pytest with no Chromium."""
    why = chromium_missing()
    if why:
        missing(why)


@pytest.fixture
def browser(tmp_path):
    with headless_chromium(tmp_path / "chromium-profile") as driver:
        yield driver


def _table(driver):
    """{run name: {column id: text}} of the runs table's rendered rows."""
    from selenium.webdriver.common.by import By

    rows, names = {}, {}
    # pinned and scrolling columns are separate rows of the same row-index
    for row in driver.find_elements(By.CSS_SELECTOR, ".ag-row[row-index]"):
        index = row.get_attribute("row-index")
        cells = {c.get_attribute("col-id"): c.text.strip()
                 for c in row.find_elements(By.CSS_SELECTOR, "[col-id]")}
        rows.setdefault(index, {}).update(cells)
        for link in row.find_elements(By.CSS_SELECTOR, "[col-id='attributes.`Run Name`'] "
                                                       "a[href*='/runs/']"):
            names[index] = link.text.strip()
    return {names[i]: cells for i, cells in rows.items() if i in names}


@pytest.mark.slow
def test_the_link_make_demo_prints_lands_on_the_grid_with_its_measures_and_chart(tmp_path,
                                                                                 browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    store = sqlite_store(tmp_path / "mlflow.db")
    log_small_grid(store)
    shots = artifacts_dir("ui")
    shot = shots / "mlflow_runs_table.png"
    names = {f"mlp-w{w:g}" for w in WIDTHS}
    cols = ("metrics.`cna_margin`", "metrics.`l2`", "metrics.`gen_gap`")
    t0 = time.time()
    with mlflow_server(store, tmp_path / "artifacts", workers=1) as url:
        started = time.time() - t0
        link = demo_link(store, url)
        driver, wait = browser, WebDriverWait(browser, 90, poll_frequency=0.25)
        try:
            # every cell listed at once: the view groups the runs by arch (nothing to unfold)
            open_the_link(driver, wait, link, names | {"grid-ui"})
            close_side_panels(driver)
            # the view's columns, no pick under "Columns" (MLflow's default shows no metric)
            wait.until(lambda d: all(c in _table(d).get("mlp-w0.05", {}) for c in cols))
            driver.save_screenshot(str(shot))
            print(f"\nscreenshot of the MLflow runs table: {shot}")
            headers = {h.get_attribute("col-id"): h.text.strip()
                       for h in driver.find_elements(By.CSS_SELECTOR, ".ag-header-cell[col-id]")}
            table = _table(driver)
            body = driver.find_element(By.TAG_NAME, "body").text
            # one click: "Chart view", where the view's chart plots every cell
            driver.find_element(By.XPATH, "//input[@name='runs-view-mode'][@value='CHART']"
                                          "/ancestor::label").click()
            wait.until(lambda d: "cna_margin vs. gen_gap" in d.find_element(
                By.TAG_NAME, "body").text)
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".scatterlayer .point"))
                       == len(WIDTHS))
            driver.save_screenshot(str(shots / "mlflow_runs_chart.png"))
        except Exception:
            driver.save_screenshot(str(shot))
            raise
    assert {headers.get(c) for c in cols} == {"cna_margin", "l2", "gen_gap"}, headers
    assert "Group: mlp" in body and "Additional runs" in body  # grouped by arch
    assert set(table) == names | {"grid-ui"}, sorted(table)
    for w in WIDTHS:
        row = table[f"mlp-w{w:g}"]
        # the table shows each metric's latest value
        assert float(row[cols[0]]) == pytest.approx(CNA_MARGIN[w]), row
        assert float(row[cols[1]]) == pytest.approx(L2[w]), row
        assert float(row[cols[2]]) == pytest.approx(GEN_GAP[w]), row
    assert table["grid-ui"][cols[0]] == "-"  # the grid run itself has no metrics
    print(f"server started in {started:.1f}s, whole check {time.time() - t0:.1f}s")
    assert Path(shot).stat().st_size > 10_000


@pytest.mark.slow
def test_the_link_shows_a_trained_grid_its_cells_by_name_and_the_ranking(tmp_path, browser,
                                                                        shared_grid):
    """A real grid and compare (pipelines/grid.py, compare.py) in cna_tf-demo, as `make demo`
    runs them (a copy of the session's shared grid, tests/_shared_grid.py: a config named demo,
    8 cells, compared here): compare's last line is the link `make demo`'s last line prints;
    from it, the cells by name and the compare run's Description (the ranking)."""
    import sys

    import mlflow
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    store = shared_grid.copy(tmp_path / "store")
    env = dict(os.environ, MLFLOW_TRACKING_URI=store, CNA_TF_BACKUP_DIR=str(tmp_path / "bk"),
               TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("MLFLOW_RUN_ID", None)
    out = {"grid.py": shared_grid.stdout}
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines" / "compare.py"),
                           "--experiment", "cna_tf-demo"],
                          env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out["compare.py"] = proc.stdout
    client = mlflow.MlflowClient(store)
    exp = client.get_experiment_by_name("cna_tf-demo")
    labels = {r.info.run_name for r in client.search_runs(
        [exp.experiment_id], "tags.`cna_tf.role` = 'train'")}
    assert len(labels) == N_CELLS
    assert all(f"FINISHED {name} (" in out["grid.py"] for name in labels)
    shots = artifacts_dir("ui")
    with mlflow_server(store, tmp_path / "artifacts", workers=1) as url:
        link = demo_link(store, url)
        # compare's closing line: the same link, in the UI `make ui` serves (port 5000)
        port = url.rsplit(":", 1)[1]
        assert out["compare.py"].strip().splitlines()[-1] == \
            "Browse the runs: make ui, then open " + link.replace(f":{port}/", ":5000/", 1)
        driver, wait = browser, WebDriverWait(browser, 90, poll_frequency=0.25)
        try:
            open_the_link(driver, wait, link, labels | {"grid-demo", "compare-demo"})
            close_side_panels(driver)
            driver.save_screenshot(str(shots / "mlflow_grid_names.png"))
            # the ranking: the compare run's Description, one click on its name
            for row in driver.find_elements(By.CSS_SELECTOR, ".ag-row"):
                if "compare-demo" in row.text:
                    row.find_element(By.LINK_TEXT, "compare-demo").click()
                    break
            wait.until(lambda d: "Metrics ranked by their correlation" in d.find_element(
                By.TAG_NAME, "body").text)
            for more in driver.find_elements(By.XPATH, "//button[normalize-space()='Show more']"):
                more.click()  # the whole Description (the UI folds a long one)
            wait.until(lambda d: "cna_margin" in d.find_element(By.TAG_NAME, "body").text)
            body = driver.find_element(By.TAG_NAME, "body").text
        finally:
            driver.save_screenshot(str(shots / "mlflow_compare_description.png"))
    assert "cna_margin" in body and "gen_gap" in body
    assert (shots / "mlflow_grid_names.png").stat().st_size > 10_000
