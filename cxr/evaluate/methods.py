"""The methods compared and their predictions: stacking as it ships, voting, the best member, baselines.

Takes: a run directory and the members' predictions (``MetaData``). Makes: each method's scores in the
split's row order, and ``eval/predictions_<split>.csv`` (every method's class per image) written and read.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr.errors import DataError, ModelError
from cxr.evaluate.stats import McNemarResult, mcnemar
from cxr.evaluate.types import SOFT, STACKING
from cxr.metrics import classification_metrics
from cxr.session import cpu_session
from cxr.spec import CARD_MEMBER_ORDER, META_STACK, OUTPUT_LABEL, OUTPUT_PROBABILITIES
from cxr.stack.features import MetaData, check_member_order, load_split
from cxr.train.predictions import read_predictions


@dataclass(frozen=True)
class Stacked:
    """The converted meta-learner's output on a split, and the metadata it carries."""

    probs: np.ndarray = field(repr=False)  # [N, K], calibrated when the metadata records a temperature
    labels: np.ndarray = field(repr=False)  # int64 [N]
    info: dict[str, Any] = field(repr=False)  # the ``cxr.meta`` JSON of meta.onnx


def run_stacking(meta_onnx: Path, data: MetaData) -> Stacked:
    """The converted meta-learner run on ``data``'s features, with its metadata (checked against ``data``)."""
    if not Path(meta_onnx).is_file():
        raise ModelError(
            f"{meta_onnx} does not exist",
            hint="train the meta-learner first (`cxr stack RUN_DIR`)",
            path=meta_onnx,
        )
    sess = cpu_session(meta_onnx)
    props = sess.get_modelmeta().custom_metadata_map
    if META_STACK not in props:
        raise ModelError(
            f"{meta_onnx} is not a cxr meta-learner (no {META_STACK})", hint="re-run `cxr stack`"
        )
    info = json.loads(props[META_STACK])
    check_member_order(
        tuple(info.get(CARD_MEMBER_ORDER, ())), data.members, what=f"evaluating with {meta_onnx}"
    )
    if tuple(info.get("classes", ())) != data.classes:
        raise DataError(
            f"{meta_onnx} was trained with class order {info.get('classes')}, the predictions have {list(data.classes)}",
            hint="re-run `cxr stack`",
        )
    inp = sess.get_inputs()[0]
    feats = data.features.astype(np.float64 if inp.type == "tensor(double)" else np.float32)
    label, probs = sess.run([OUTPUT_LABEL, OUTPUT_PROBABILITIES], {inp.name: feats})
    return Stacked(np.asarray(probs, dtype=np.float64), np.asarray(label, dtype=np.int64), dict(info))


def choose_best_member(run_dir: Path, members: tuple[str, ...], test: MetaData) -> tuple[str, str, list[str]]:
    """The best single member by validation accuracy (then macro-F1, then member order)."""
    notes: list[str] = []
    try:
        val = load_split(run_dir, members, "val")
        source, labels, probs = "validation", val.labels, val.member_probs
    except DataError as e:
        notes.append(
            f"no usable validation predictions ({e.message}): the best member is chosen on the test split itself"
        )
        source, labels, probs = "test", test.labels, test.member_probs
    scores = []
    for j, name in enumerate(members):
        m = classification_metrics(labels, probs[:, j], test.classes)
        scores.append((m.accuracy, m.macro_f1 if m.macro_f1 is not None else -1.0, -j, name))
    best = max(scores)
    return best[3], f"highest {source} accuracy ({best[0]:.4f}), ties by macro-F1 then member order", notes


def load_baselines(run_dir: Path, split: str, data: MetaData) -> tuple[dict[str, np.ndarray], list[str]]:
    """Reference methods outside the ensemble (e.g. ``cxr train probe``'s linear probe), in ``data``'s row order.

    Reads ``RUN_DIR/baselines/<name>/<split>.csv`` (prediction tables); one made on another manifest or
    other images is left out with a note.
    """
    found: dict[str, np.ndarray] = {}
    notes: list[str] = []
    for path in sorted((Path(run_dir) / "baselines").glob(f"*/{split}.csv")):
        table = read_predictions(path)
        if table.manifest_digest != data.manifest_digest or set(table.paths) != set(data.paths):
            notes.append(
                f"baseline {path.parent.name} left out: it was made on other images or another split"
            )
            continue
        row = {p: i for i, p in enumerate(table.paths)}
        found[path.parent.name] = table.probs[[row[p] for p in data.paths]]
    return found, notes


def stacking_tests(
    correct: Mapping[str, np.ndarray], best: str, best_label: str, exact_below: int
) -> dict[str, McNemarResult]:
    """McNemar's test of stacking against the best member (key ``best``), soft voting and every baseline."""
    if STACKING not in correct:
        return {}
    others = [("stacking_vs_best_member", best, best_label), ("stacking_vs_soft_vote", SOFT, "soft voting")]
    others += [
        (f"stacking_vs_{k.removeprefix('baseline:')}", k, k.removeprefix("baseline:"))
        for k in correct
        if k.startswith("baseline:")
    ]
    return {
        name: mcnemar(correct[STACKING], correct[key], a="stacking", b=label, exact_below=exact_below)
        for name, key, label in others
        if key in correct
    }


def soft_vote(member_probs: np.ndarray) -> np.ndarray:
    """Mean of the members' probabilities: [N, M, K] -> [N, K]."""
    return np.asarray(member_probs, dtype=np.float64).mean(axis=1)


def majority_vote(member_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels [N], vote shares [N, K]); ties broken by soft-vote probability, then class order."""
    p = np.asarray(member_probs, dtype=np.float64)
    n, m, k = p.shape
    votes = np.zeros((n, k), dtype=np.int64)
    np.add.at(votes, (np.repeat(np.arange(n), m), np.argmax(p, axis=2).ravel()), 1)
    mean = p.mean(axis=1)
    top = votes == votes.max(axis=1, keepdims=True)
    labels = np.argmax(np.where(top, mean, -np.inf), axis=1)
    return labels, votes / float(m)


FIXED = ("path", "label")


def table_path(eval_dir: Path, split: str) -> Path:
    return Path(eval_dir) / f"predictions_{split}.csv"


@dataclass(frozen=True)
class MethodPredictions:
    paths: tuple[str, ...]
    labels: np.ndarray  # int64 [N], indices into ``classes``
    predictions: dict[str, np.ndarray]  # method key -> int64 [N]
    classes: tuple[str, ...]


def write_table(
    path: Path,
    paths: Sequence[str],
    labels: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    classes: Sequence[str],
) -> Path:
    """Write the table (class names, not indices, so a reader needs no other file)."""
    keys = list(predictions)
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([*FIXED, *keys])
        for i, p in enumerate(paths):
            w.writerow([p, classes[int(labels[i])], *(classes[int(predictions[k][i])] for k in keys)])
    return Path(path)


def read_table(path: Path, classes: Sequence[str]) -> MethodPredictions:
    """Read a table written by ``write_table``; a missing file or an unknown class is a ``DataError``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"no prediction table at {path}",
            hint="run `cxr evaluate RUN_DIR` (cxr 0.1 writes eval/predictions_test.csv) and try again",
            path=path,
        )
    index = {c: i for i, c in enumerate(classes)}
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0][:2]) != FIXED:
        raise DataError(f"{path} is not a cxr prediction table (header {rows[0] if rows else []})", path=path)
    keys = rows[0][2:]
    try:
        coded = np.array([[index[v] for v in r[1:]] for r in rows[1:]], dtype=np.int64).reshape(
            -1, len(keys) + 1
        )
    except KeyError as e:
        raise DataError(
            f"{path} names class {e.args[0]!r}, not one of {', '.join(classes)}", path=path
        ) from e
    return MethodPredictions(
        paths=tuple(r[0] for r in rows[1:]),
        labels=coded[:, 0],
        predictions={k: coded[:, j + 1] for j, k in enumerate(keys)},
        classes=tuple(classes),
    )
