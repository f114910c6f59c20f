"""`train` of k8s/MLproject: `pipelines/train.py` as MLflow's kubernetes backend starts it.

MLflow's kubernetes backend builds the container's command by splitting the entry point's
command line and shell-quoting every token again (``mlflow.projects.kubernetes._get_run_command``);
Kubernetes then runs that list without a shell, so an empty value arrives as the two characters
``''`` and a JSON value (``data_options``) with its quotes around it. This undoes exactly that one
level of quoting (a token is unquoted only when it is the shell-quoted form of its unquoted
value, so arguments given by hand pass unchanged) and runs ``pipelines/train.py``.
"""
from __future__ import annotations

import runpy
import shlex
import sys
from pathlib import Path
from typing import List

TRAIN = Path(__file__).resolve().parent.parent / "pipelines" / "train.py"


def unquote(token: str) -> str:
    """``"''"`` -> ``""``, ``"'{\"a\": 1}'"`` -> ``'{"a": 1}'``; anything else unchanged."""
    try:
        parts = shlex.split(token)
    except ValueError:
        return token
    if len(parts) == 1 and shlex.quote(parts[0]) == token:
        return parts[0]
    return token


def argv(tokens: List[str]) -> List[str]:
    return [unquote(t) for t in tokens]


def main() -> None:
    sys.argv = [str(TRAIN), *argv(sys.argv[1:])]
    runpy.run_path(str(TRAIN), run_name="__main__")


if __name__ == "__main__":
    main()
