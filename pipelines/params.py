"""What an MLproject step records as its run's parameters: one rule for every step.

``mlflow run . -e STEP -P k=v`` logs every parameter the entry point declares in ``MLproject``
(its value as given, or the declared default, shell-quoted: an empty string is ``''``) before
the step's script starts, and MLflow refuses to change a param's value afterwards. So:

* A step never logs a key its entry point declares. What it *resolves* from its parameters (a
  config's name from a path, the grid run it found, the epochs ``quick`` sets, the normalized
  network parameters) goes to params ``resolved.<key>``, a prefix no entry point declares:
  :func:`log_resolved`.
* A run that ``mlflow run`` did not start gets the declared params exactly as ``mlflow run``
  would have logged them, from whoever starts it: the grid for its cells' child runs, a step
  script started as ``python pipelines/STEP.py`` for its own run (:func:`log_launch`). So a cell
  trained by the grid has the params of the same cell launched with ``mlflow run . -e train``.
* Integer, float and boolean parameters are parsed one way (:func:`parse_int`,
  :func:`parse_float`, :func:`parse_bool`), whatever spelling the command line used (``"5"``,
  ``"5.0"``, ``"true"``).
"""
from __future__ import annotations

import functools
import json
import shlex
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

__all__ = ["PROJECT_DIR", "RESOLVED", "declared", "cli_value", "launch_params", "log_launch",
           "log_resolved", "read_params", "parse_int", "parse_float", "parse_bool",
           "parse_options", "PARSERS"]

PROJECT_DIR = Path(__file__).resolve().parent.parent
RESOLVED = "resolved."


def parse_bool(v: Any) -> bool:
    """A boolean from a bool or a string such as ``true``, ``False``, ``1``, ``no``."""
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "y", "on"):
        return True
    if s in ("0", "false", "no", "n", "off", ""):
        return False
    raise ValueError(f"not a boolean: {v!r} (use true or false)")


def parse_int(v: Any) -> int:
    """An integer from an int, an integral float, or a string of one (``"5"``, ``"5.0"``)."""
    if isinstance(v, bool):
        raise ValueError(f"not an integer: {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"not an integer: {v!r}") from None
    if not f.is_integer():
        raise ValueError(f"not an integer: {v!r}")
    return int(f)


def parse_float(v: Any) -> float:
    """A float from a number or a string of one."""
    if isinstance(v, bool):
        raise ValueError(f"not a number: {v!r}")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"not a number: {v!r}") from None


def parse_options(v: Any) -> str:
    """Dataset options as canonical JSON (a mapping in YAML, a JSON string on the command line)."""
    if v is None or v == "":
        return ""
    if isinstance(v, str):
        v = json.loads(v)
    if not isinstance(v, Mapping):
        raise ValueError(f"data_options must be a mapping, got {v!r}")
    return json.dumps(v, sort_keys=True, separators=(",", ":")) if v else ""


#: MLproject parameter type -> the one parser of its values.
PARSERS: Dict[str, Callable[[Any], Any]] = {"int": parse_int, "float": parse_float,
                                            "bool": parse_bool, "string": str}


@functools.lru_cache(maxsize=None)
def _entry_points() -> Dict[str, Dict[str, Dict[str, Any]]]:
    import yaml

    spec = yaml.safe_load((PROJECT_DIR / "MLproject").read_text())
    return {name: dict(ep.get("parameters") or {}) for name, ep in spec["entry_points"].items()}


def declared(entry_point: str) -> Dict[str, Dict[str, Any]]:
    """The parameters ``MLproject`` declares for an entry point: name -> {type, default}."""
    eps = _entry_points()
    if entry_point not in eps:
        raise KeyError(f"MLproject has no entry point {entry_point!r}; it has {sorted(eps)}")
    return eps[entry_point]


def cli_value(v: Any) -> str:
    """A value as it is spelled on the command line: ``true``/``false`` for booleans."""
    if isinstance(v, bool):
        return str(v).lower()
    return "" if v is None else str(v)


def launch_params(entry_point: str, values: Mapping[str, Any]) -> Dict[str, str]:
    """The params ``mlflow run . -e ENTRY_POINT -P k=v ...`` logs for these values.

    Every declared parameter, its value from ``values`` or else the MLproject default, shell
    quoted as MLflow quotes it.

    Raises:
        KeyError: a key of ``values`` that the entry point does not declare.
    """
    spec = declared(entry_point)
    unknown = sorted(set(values) - set(spec))
    if unknown:
        raise KeyError(f"entry point {entry_point!r} declares no parameter(s) {unknown}")
    return {name: shlex.quote(cli_value(values[name] if name in values else p.get("default")))
            for name, p in spec.items()}


def log_launch(entry_point: str, values: Mapping[str, Any], run_id: Optional[str] = None,
               client=None) -> bool:
    """Logs :func:`launch_params` to a run that nothing launched through ``mlflow run``.

    A run that already has any declared param (``mlflow run`` or the grid logged them; a
    resumed run) is left as it is.

    Returns:
        True when the params were logged here.
    """
    import mlflow
    from mlflow.entities import Param

    client = client or mlflow.MlflowClient()
    run_id = run_id or mlflow.active_run().info.run_id
    logged = client.get_run(run_id).data.params
    params = launch_params(entry_point, values)
    if any(k in logged for k in params):
        return False
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    return True


def log_resolved(values: Mapping[str, Any], run_id: Optional[str] = None, client=None) -> None:
    """Logs what a step resolved as params ``resolved.<key>``.

    A value equal to the run's declared param of the same key (as given, unquoted) is not
    repeated. A resumed run resolves the same values again; one that resolves a different value
    keeps the first and says so on stderr (MLflow params never change).
    """
    import sys

    import mlflow
    from mlflow.entities import Param

    client = client or mlflow.MlflowClient()
    run_id = run_id or mlflow.active_run().info.run_id
    logged = client.get_run(run_id).data.params
    given = read_params({k: v for k, v in logged.items() if not k.startswith(RESOLVED)})
    new = []
    for k, v in values.items():
        key, value = RESOLVED + k, cli_value(v)
        if key not in logged and given.get(k) == value:
            continue
        if key not in logged:
            new.append(Param(key, value))
        elif logged[key] != value:
            print(f"warning: run {run_id} resolved {k}={value!r} now, {logged[key]!r} before; "
                  "the param keeps the first value", file=sys.stderr, flush=True)
    if new:
        client.log_batch(run_id, params=new)


def read_params(params: Mapping[str, str], types: Mapping[str, Callable[[Any], Any]] = None
                ) -> Dict[str, Any]:
    """A run's parameter values: declared ones unquoted, overridden by ``resolved.*`` ones.

    Args:
        params: ``run.data.params``.
        types: optional parser per key; a value it rejects is kept as the string.
    """
    out: Dict[str, Any] = {}
    for k, v in params.items():
        if not k.startswith(RESOLVED):
            try:
                words = shlex.split(v)
                out[k] = words[0] if len(words) == 1 else ("" if not words else v)
            except ValueError:
                out[k] = v
    out.update({k[len(RESOLVED):]: v for k, v in params.items() if k.startswith(RESOLVED)})
    for k, parse in (types or {}).items():
        if k in out:
            try:
                out[k] = parse(out[k])
            except (TypeError, ValueError):
                pass
    return out
