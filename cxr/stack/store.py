"""Save and load a fitted meta-learner without pickle: nothing in the files can execute code on load.

Takes: a fitted estimator of a kind in ``cxr.stack.estimators.ESTIMATORS``. Makes: a JSON-able dict
(kind, constructor parameters, which attributes are arrays) and an ``.npz`` of its fitted arrays, read
back with ``allow_pickle=False``. Loading only instantiates classes from that table, so a tampered file
cannot name another class. ``save_estimator`` reloads what it wrote and requires identical
``predict_proba`` output, so an estimator whose state is not fully captured is refused, not half-saved.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cxr.errors import ModelError
from cxr.stack.estimators import ESTIMATORS, kind_of

_SCALARS = (bool, int, float, str, type(None))


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def estimator_state(est: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(description, arrays) of a fitted estimator; refuse state that cannot be stored safely."""
    kind = kind_of(est)
    params = {k: _plain(v) for k, v in est.get_params(deep=False).items()}
    bad = [k for k, v in params.items() if not _jsonable(v)]
    if bad:
        raise ModelError(
            f"{kind}: parameter(s) {', '.join(bad)} cannot be stored as JSON", hint="use plain values"
        )
    scalars: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for name, value in vars(est).items():
        if name in params:
            continue
        if isinstance(value, np.ndarray) and value.dtype != object:
            arrays[name] = value
        elif isinstance(value, _SCALARS) or isinstance(value, np.generic):
            scalars[name] = _plain(value)
        else:
            raise ModelError(
                f"{kind}: fitted attribute {name} ({type(value).__name__}) cannot be stored without pickle",
                hint=f"use one of the meta-learners {', '.join(ESTIMATORS)}",
            )
    return {"kind": kind, "params": params, "scalars": scalars, "arrays": sorted(arrays)}, arrays


def load_estimator(description: Mapping[str, Any], npz_path: Path) -> Any:
    """Rebuild the estimator from ``description`` (as written by ``save_estimator``) and its ``.npz``."""
    kind = str(description.get("kind", ""))
    if kind not in ESTIMATORS:
        raise ModelError(
            f"meta-learner kind {kind!r} in {npz_path} is not one cxr knows ({', '.join(ESTIMATORS)})",
            hint="re-train the meta-learner with `cxr stack`",
            path=npz_path,
        )
    if not Path(npz_path).is_file():
        raise ModelError(
            f"meta-learner arrays {npz_path} are missing", hint="re-run `cxr stack`", path=npz_path
        )
    est = ESTIMATORS[kind].cls(**dict(description["params"]))
    for name, value in dict(description.get("scalars", {})).items():
        setattr(est, name, value)
    with np.load(npz_path, allow_pickle=False) as data:
        missing = [a for a in description.get("arrays", []) if a not in data.files]
        if missing:
            raise ModelError(f"{npz_path} lacks array(s) {', '.join(missing)}", hint="re-run `cxr stack`")
        for name in description.get("arrays", []):
            setattr(est, name, data[name])
    return est


def save_estimator(est: Any, npz_path: Path, check_features: np.ndarray) -> dict[str, Any]:
    """Write the arrays to ``npz_path``; return the description to store in meta.json (round trip checked)."""
    description, arrays = estimator_state(est)
    npz_path = Path(npz_path)
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    with npz_path.open("wb") as f:
        np.savez(f, allow_pickle=False, **arrays)  # type: ignore[arg-type]  # numpy's stub cannot type **arrays
    again = load_estimator(json.loads(json.dumps(description)), npz_path)
    if not np.array_equal(again.predict_proba(check_features), est.predict_proba(check_features)):
        raise ModelError(
            f"{description['kind']}: reloading the saved meta-learner does not reproduce its probabilities",
            hint=f"use one of the meta-learners {', '.join(ESTIMATORS)}",
        )
    return description
