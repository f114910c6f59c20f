"""tests/_stores.py: a copied empty store is the store MLflow would have made there."""
import sqlite3

from _stores import sqlite_store


def _contents(path):
    """Every row of every table, creation times left out."""
    with sqlite3.connect(path) as db:
        tables = sorted(t for (t,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"))
        rows = {}
        for t in tables:
            cols = [c[1] for c in db.execute(f'PRAGMA table_info("{t}")')
                    if not c[1].endswith("_time")]
            rows[t] = sorted(db.execute(f'SELECT {", ".join(cols)} FROM "{t}"').fetchall())
    db.close()
    return tables, rows


def test_a_copied_store_is_the_one_mlflow_makes(tmp_path, monkeypatch):
    import mlflow

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    made = tmp_path / "made.db"
    mlflow.MlflowClient(f"sqlite:///{made}").search_experiments()
    copied = tmp_path / "sub" / "copied.db"
    assert sqlite_store(copied, cwd=work) == f"sqlite:///{copied}"
    assert _contents(copied) == _contents(made)
    assert _contents(made)[1]["experiments"][0][:3] == (0, "Default", str(work / "mlruns" / "0"))
    # an existing store is left as it is
    mlflow.MlflowClient(f"sqlite:///{copied}").create_experiment("kept")
    sqlite_store(copied)
    assert "kept" in {e.name for e in mlflow.MlflowClient(f"sqlite:///{copied}")
                      .search_experiments()}
