"""A cell's resume state (``keras.callbacks.BackupAndRestore`` files), owned by one run.

A backup directory is keyed by the cell (``.cna_backup/<cell key>``), so two runs of the same
cell share its path: a run that crashed and a fresh ``mlflow run . -e train`` of the same cell
afterwards. Only the run that wrote a backup resumes from it; any other run discards it and
starts from scratch. The owner is recorded in ``owner.json`` beside Keras' files.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

__all__ = ["OWNER_FILE", "owner", "has_backup", "claim"]

OWNER_FILE = "owner.json"
_METADATA = "training_metadata.json"  # what BackupAndRestore writes once an epoch is backed up


def owner(backup: Path) -> Optional[str]:
    """The run id that wrote the backup at ``backup``, or None (no backup, or no owner file)."""
    try:
        return json.loads((Path(backup) / OWNER_FILE).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def has_backup(backup: Path, run_id: Optional[str] = None) -> bool:
    """Whether ``backup`` holds a completed epoch (written by ``run_id``, when given)."""
    backup = Path(backup)
    if not (backup / _METADATA).exists():
        return False
    return run_id is None or owner(backup) == run_id


def claim(backup: Path, run_id: str) -> bool:
    """Makes ``backup`` the resume state of ``run_id``.

    Returns:
        True when the run resumes from an existing backup it wrote; False when it starts fresh
        (no backup, or another run's, which is deleted first).
    """
    backup = Path(backup)
    if has_backup(backup, run_id):
        return True
    if backup.exists():
        shutil.rmtree(backup)
    backup.mkdir(parents=True)
    (backup / OWNER_FILE).write_text(json.dumps({"run_id": run_id}))
    return False
