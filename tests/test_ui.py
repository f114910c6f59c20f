"""The MLflow UI as a user sees it: a grid's runs and their CNA-M and L2 columns, in Chromium.

A small grid (a parent run and four child runs carrying `cna_margin` and `l2`, as `grid.py` and
`train.py` record them) is logged to a sqlite store; `mlflow server` serves it on 127.0.0.1 and
headless Chromium, driven by chromedriver through Selenium, opens the experiment's runs page,
expands the grid, turns the two metric columns on (MLflow 3 shows no metric column until it is
picked in "Columns") and reads the table. The screenshot is kept in
``$CNA_TF_TEST_ARTIFACTS/ui/`` (default: the temp dir's ``cna_tf_test_artifacts/ui/``).
"""
import os
import time
from pathlib import Path

import pytest

from _servers import (CHROMEDRIVER, CHROMIUM, artifacts_dir, chromium_missing, missing,
                      mlflow_server, require_module)

WIDTHS = (0.05, 0.1, 0.25, 0.5)
# final (step 2) values, exact in binary so the table shows them as logged
CNA_MARGIN = {0.05: 0.125, 0.1: 0.25, 0.25: 0.375, 0.5: -0.5}
L2 = {0.05: 10.5, 0.1: 11.25, 0.25: 12.75, 0.5: 14.0}
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=2200,900",
                  "--disable-dev-shm-usage")


def log_small_grid(tracking_uri: str) -> str:
    """A grid run and 4 finished child runs with cna_margin and l2 at steps 0..2."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.create_experiment("cna_tf-ui")
    parent = client.create_run(exp, run_name="grid-ui",
                               tags={"cna_tf.role": "grid", "cna_tf.config": "ui"})
    now = int(time.time() * 1000)
    for w in WIDTHS:
        run = client.create_run(exp, run_name=f"mlp-w{w:g}", tags={
            "mlflow.parentRunId": parent.info.run_id, "cna_tf.role": "train", "arch": "mlp",
            "dataset": "digits"})
        metrics = [Metric(name, final * (step + 1) / 3, now + step, step)
                   for step in range(3) for name, final in (("cna_margin", CNA_MARGIN[w]),
                                                            ("l2", L2[w]))]
        client.log_batch(run.info.run_id, metrics=metrics,
                         params=[Param("width", str(w)), Param("arch", "mlp")],
                         tags=[RunTag("cna_tf.snapshots", "0,1,2")])
        client.set_terminated(run.info.run_id)
    client.set_terminated(parent.info.run_id)
    return exp


@pytest.fixture
def browser(tmp_path):
    why = chromium_missing()
    if why:
        missing(why)   # a skip here, a failure under CI=true
    webdriver = require_module("selenium.webdriver", "pip install selenium (dev extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


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
def test_runs_table_lists_the_grid_with_cna_margin_and_l2(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = log_small_grid(store)
    shot = artifacts_dir("ui") / "mlflow_runs_table.png"
    t0 = time.time()
    with mlflow_server(store, tmp_path / "artifacts", workers=1) as url:
        started = time.time() - t0
        driver, wait = browser, WebDriverWait(browser, 90, poll_frequency=0.25)
        try:
            driver.get(f"{url}/#/experiments/{exp}/runs")
            # the grid run is listed, its children folded under it
            wait.until(lambda d: "grid-ui" in _table(d))
            for close in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
                if close.is_displayed():  # the assistant side panel, to see the whole table
                    close.click()
            driver.find_element(By.CSS_SELECTOR,
                                ".ag-row [col-id='attributes.`Run Name`'] button").click()
            names = {f"mlp-w{w:g}" for w in WIDTHS}
            wait.until(lambda d: names <= set(_table(d)))
            # MLflow 3 shows metric columns only once they are picked under "Columns"
            driver.find_element(By.XPATH, "//button[normalize-space()='Columns']").click()
            for metric in ("cna_margin", "l2"):
                wait.until(lambda d: d.find_element(
                    By.XPATH, f"//span[@title='{metric}']/preceding-sibling::span"
                              "[contains(@class, 'tree-checkbox')]")).click()
            driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
            cols = ("metrics.`cna_margin`", "metrics.`l2`")
            wait.until(lambda d: all(c in _table(d).get("mlp-w0.05", {}) for c in cols))
            headers = {h.get_attribute("col-id"): h.text.strip()
                       for h in driver.find_elements(By.CSS_SELECTOR, ".ag-header-cell[col-id]")}
            assert headers.get(cols[0]) == "cna_margin" and headers.get(cols[1]) == "l2", headers
            table = _table(driver)
        finally:
            driver.save_screenshot(str(shot))
            print(f"\nscreenshot of the MLflow runs table: {shot}")
    assert set(table) == names | {"grid-ui"}, sorted(table)
    for w in WIDTHS:
        row = table[f"mlp-w{w:g}"]
        # the table shows each metric's latest value
        assert float(row[cols[0]]) == pytest.approx(CNA_MARGIN[w]), row
        assert float(row[cols[1]]) == pytest.approx(L2[w]), row
    assert table["grid-ui"][cols[0]] == "-"  # the grid run itself has no metrics
    print(f"server started in {started:.1f}s, whole check {time.time() - t0:.1f}s")
    assert Path(shot).stat().st_size > 10_000


TINY_GRID = """name: uigrid
defaults: {arch: mlp, dataset: digits, width: 0.05, depth: 2, batch_size: 64, epochs: 1,
           n_train: 200, n_test: 100, max_samples: 100}
cells:
  - {seed: [0, 1]}
"""


@pytest.mark.slow
def test_ui_shows_the_grid_and_cells_by_name_and_the_ranking_as_description(tmp_path, browser):
    """A real grid and compare (pipelines/grid.py, compare.py): names and Description in the UI."""
    import subprocess
    import sys

    import mlflow
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root = Path(__file__).resolve().parent.parent
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tmp_path / "uigrid.yaml"
    config.write_text(TINY_GRID)
    env = dict(os.environ, MLFLOW_TRACKING_URI=store, CNA_TF_BACKUP_DIR=str(tmp_path / "bk"),
               TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("MLFLOW_RUN_ID", None)
    for step in (["grid.py", "--config", str(config), "--workers", "2"],
                 ["compare.py", "--experiment", "cna_tf-uigrid"]):
        proc = subprocess.run([sys.executable, str(root / "pipelines" / step[0]), *step[1:]],
                              env=env, cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        if step[0] == "grid.py":
            progress = proc.stdout
    client = mlflow.MlflowClient(store)
    exp = client.get_experiment_by_name("cna_tf-uigrid")
    compare_run = client.search_runs([exp.experiment_id], "tags.`cna_tf.role` = 'compare'")[0]
    labels = {r.info.run_name for r in client.search_runs(
        [exp.experiment_id], "tags.`cna_tf.role` = 'train'")}
    assert len(labels) == 2 and all(f"FINISHED {name} (" in progress for name in labels)
    shots = artifacts_dir("ui")
    with mlflow_server(store, tmp_path / "artifacts", workers=1) as url:
        driver, wait = browser, WebDriverWait(browser, 90, poll_frequency=0.25)
        try:
            driver.get(f"{url}/#/experiments/{exp.experiment_id}/runs")
            wait.until(lambda d: {"grid-uigrid", "compare-uigrid"} <= set(_table(d)))
            for close in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
                if close.is_displayed():
                    close.click()
            for row in driver.find_elements(By.CSS_SELECTOR, ".ag-row"):
                if "grid-uigrid" in row.text:
                    row.find_element(By.CSS_SELECTOR,
                                     "[col-id='attributes.`Run Name`'] button").click()
                    break
            wait.until(lambda d: labels <= set(_table(d)))
            driver.save_screenshot(str(shots / "mlflow_grid_names.png"))
            driver.get(f"{url}/#/experiments/{exp.experiment_id}/runs/"
                       f"{compare_run.info.run_id}")
            wait.until(lambda d: "Correlation with" in d.find_element(By.TAG_NAME, "body").text)
            body = driver.find_element(By.TAG_NAME, "body").text
        finally:
            driver.save_screenshot(str(shots / "mlflow_compare_description.png"))
    assert "cna_margin" in body and "gen_gap" in body
    assert (shots / "mlflow_grid_names.png").stat().st_size > 10_000
