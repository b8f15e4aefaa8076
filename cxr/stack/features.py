"""The meta-learner's inputs: member prediction tables turned into one feature matrix, with guards.

Takes: a run directory (``manifest.csv``, ``members/<name>/predictions/<split>.csv``) and a member order.
Makes: ``MetaData`` (paths, labels, features [N, M*K] in member-major order: member 0's K probabilities,
then member 1's...). Refuses, naming what was given: a missing member, prediction files from another
split or manifest, another class order, stale predictions (checkpoint hash differs from ``best.json``),
and, above all, leakage: a meta-training row whose image the base models trained on. numpy only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr.data.manifest import Manifest, load_manifest
from cxr.errors import DataError
from cxr.train.predictions import PredictionTable, align_members, read_predictions

log = logging.getLogger(__name__)

META_JSON = "meta.json"
META_NPZ = "meta.npz"
META_ONNX = "meta.onnx"
FEATURE_LAYOUT = "member-major: column m*K + k is member m's probability of class k"


class LeakageError(DataError):
    """Predictions for images a base model trained on would reach the meta-learner."""


class MemberOrderError(DataError):
    """The members given do not match the members (or their order) the meta-learner was trained on."""


@dataclass(frozen=True)
class MetaData:
    members: tuple[str, ...]
    classes: tuple[str, ...]
    split: str
    manifest_digest: str
    paths: tuple[str, ...]
    labels: np.ndarray  # int64 [N], indices into ``classes``
    member_probs: np.ndarray  # float64 [N, M, K]
    checkpoints: tuple[str, ...]  # per member, checkpoint sha256 recorded with the predictions

    @property
    def features(self) -> np.ndarray:
        """[N, M*K] member-major: column m*K + k is member m's probability of class k."""
        n, m, k = self.member_probs.shape
        return self.member_probs.reshape(n, m * k)


def member_dir(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / "members" / name


def discover_members(run_dir: Path) -> tuple[str, ...]:
    """Member names under ``RUN_DIR/members`` in sorted (hence fixed) order."""
    root = Path(run_dir) / "members"
    if not root.is_dir():
        raise DataError(
            f"{root} does not exist: no trained members in {run_dir}",
            hint="train the base models first (`cxr train base CONFIG`)",
            path=root,
        )
    names = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not names:
        raise DataError(f"{root} holds no member folders", hint="train the base models first", path=root)
    return names


def read_best(run_dir: Path, name: str) -> dict[str, Any]:
    """The member's ``best.json`` (checkpoint info), or {} when absent."""
    path = member_dir(run_dir, name) / "best.json"
    data = _read_json(path, "re-train the member") if path.is_file() else {}
    return data if isinstance(data, dict) else {}


def _read_json(path: Path, hint: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}", hint=hint, path=path) from e


def check_member_order(expected: Sequence[str], given: Sequence[str], *, what: str = "members") -> None:
    """Refuse ``given`` unless it is exactly ``expected`` (same names, same order), saying what differs."""
    expected, given = tuple(expected), tuple(given)
    if expected == given:
        return
    missing = [n for n in expected if n not in given]
    extra = [n for n in given if n not in expected]
    if missing:
        raise MemberOrderError(
            f"{what}: member(s) {', '.join(missing)} missing (the meta-learner was trained on "
            f"{', '.join(expected)}; given {', '.join(given) or 'none'})",
            hint="provide every member the meta-learner was trained on, or re-train it (`cxr stack`)",
        )
    if extra:
        raise MemberOrderError(
            f"{what}: member(s) {', '.join(extra)} unknown to the meta-learner (trained on {', '.join(expected)})",
            hint="drop them, or re-train the meta-learner with them (`cxr stack --members ...`)",
        )
    pos = next(i for i, (a, b) in enumerate(zip(expected, given, strict=True)) if a != b)
    raise MemberOrderError(
        f"{what}: member order {', '.join(given)} differs from the meta-learner's {', '.join(expected)} "
        f"(position {pos}: '{given[pos]}' where '{expected[pos]}' belongs); its features are in that order",
        hint=f"pass the members in the order {', '.join(expected)}",
    )


def check_split_membership(
    paths: Iterable[str], manifest: Manifest, allowed: Iterable[str], *, what: str
) -> None:
    """Every path must be in ``manifest`` and in one of the ``allowed`` splits; else ``LeakageError``."""
    allowed = set(allowed)
    split_of = {r.path: r.split for r in manifest.rows}
    unknown = [p for p in paths if p not in split_of]
    if unknown:
        raise DataError(
            f"{what}: {len(unknown)} image(s) are not in the manifest {manifest.path} (first: {unknown[0]})",
            hint="the predictions were made on another manifest: re-run predictions for this run",
        )
    bad: dict[str, list[str]] = {}
    for p in paths:
        s = split_of[p]
        if s not in allowed:
            bad.setdefault(s, []).append(p)
    if bad:
        detail = "; ".join(f"{len(v)} from split '{s}' (first: {v[0]})" for s, v in sorted(bad.items()))
        why = (
            "the base models trained on them, so their predictions are over-confident and would leak into the "
            "meta-learner"
            if "train" in bad
            else "the test split must stay untouched until the final evaluation"
        )
        raise LeakageError(
            f"{what}: meta-training rows must come from split(s) {', '.join(sorted(allowed))} only, but {detail}: "
            f"{why}",
            hint="train the meta-learner on validation predictions (the default, `--source val`) or on a "
            "separate blend split (`cxr data split --blend F`, then `--source blend`)",
        )


def load_tables(run_dir: Path, members: Sequence[str], split: str) -> list[PredictionTable]:
    """Read ``members/<name>/predictions/<split>.csv`` for each member; a missing one is named."""
    missing = [n for n in members if not (member_dir(run_dir, n) / "predictions" / f"{split}.csv").is_file()]
    if missing:
        raise DataError(
            f"member(s) {', '.join(missing)} have no {split} predictions in {Path(run_dir) / 'members'}",
            hint="train them (`cxr train base`), which writes val and test predictions, or leave them out "
            "with --members",
        )
    tables = [read_predictions(member_dir(run_dir, n) / "predictions" / f"{split}.csv") for n in members]
    for name, t in zip(members, tables, strict=True):
        if t.member != name:
            raise DataError(
                f"{member_dir(run_dir, name)}/predictions/{split}.csv says it holds member '{t.member}', not "
                f"'{name}'",
                hint="do not copy prediction files between members; re-run predictions",
            )
        if t.split != split:
            raise DataError(
                f"member '{name}': {split}.csv holds predictions for split '{t.split}'",
                hint="re-run predictions for this member",
            )
    return tables


def check_checkpoints(run_dir: Path, tables: Sequence[PredictionTable]) -> None:
    """Predictions must come from the checkpoint ``best.json`` describes (when both record a hash)."""
    for t in tables:
        best = read_best(run_dir, t.member)
        sha = str(best.get("sha256", "") or "")
        if sha and t.checkpoint_sha256 and sha != t.checkpoint_sha256:
            raise DataError(
                f"member '{t.member}': its {t.split} predictions come from checkpoint {t.checkpoint_sha256[:12]} "
                f"but best.json describes checkpoint {sha[:12]}",
                hint="re-run predictions with the current checkpoint",
            )
        classes = best.get("classes")
        if classes is not None and tuple(classes) != t.classes:
            raise DataError(
                f"member '{t.member}': best.json has class order {list(classes)} but its predictions have "
                f"{list(t.classes)}",
                hint="re-run predictions with the current checkpoint",
            )


def check_fp32(tables: Sequence[PredictionTable]) -> None:
    """Stacking and evaluation use the probabilities the FP32 ONNX members ship, never autocast ones."""
    reduced = [f"{t.member} ({t.precision})" for t in tables if t.precision not in ("", "fp32")]
    if reduced:
        raise DataError(
            f"the {tables[0].split} predictions of {', '.join(reduced)} were computed in reduced precision, "
            "but the fused graph runs FP32: a meta-learner fit on them would not match what ships",
            hint="re-write them in FP32 with `cxr train base --config CONFIG --all --resume` (a finished "
            "member only re-predicts; cxr >= 0.1 always predicts in FP32)",
        )


def load_split(
    run_dir: Path,
    members: Sequence[str],
    split: str,
    *,
    manifest: Manifest | None = None,
) -> MetaData:
    """Aligned predictions of ``members`` on ``split``, checked against the run's manifest."""
    run_dir = Path(run_dir)
    if not members:
        raise DataError("no members given", hint="train the base models first")
    if len(set(members)) != len(members):
        raise DataError(f"member list {list(members)} names a member twice", hint="name each member once")
    manifest = manifest or load_manifest(run_dir / "manifest.csv", check_files=False)
    tables = load_tables(run_dir, members, split)
    paths, labels, probs = align_members(tables)
    digest = manifest.digest()
    if tables[0].manifest_digest != digest:
        raise DataError(
            f"the {split} predictions were made on manifest {tables[0].manifest_digest}, but this run's "
            f"manifest {manifest.path} is {digest}",
            hint="re-run predictions for every member with this run's manifest",
        )
    if tuple(tables[0].classes) != tuple(manifest.classes):
        raise DataError(
            f"predictions have class order {list(tables[0].classes)} but the manifest has {list(manifest.classes)}",
            hint="re-run predictions with the run's class list",
        )
    check_checkpoints(run_dir, tables)
    check_fp32(tables)
    return MetaData(
        members=tuple(members),
        classes=tuple(tables[0].classes),
        split=split,
        manifest_digest=digest,
        paths=tuple(paths),
        labels=labels,
        member_probs=probs,
        checkpoints=tuple(t.checkpoint_sha256 for t in tables),
    )


def read_meta_json(stack_dir: Path) -> dict[str, Any]:
    path = Path(stack_dir) / META_JSON
    if not path.is_file():
        raise DataError(
            f"{path} does not exist",
            hint="train the meta-learner first (`cxr stack RUN_DIR`)",
            path=path,
        )
    data = _read_json(path, "re-run `cxr stack`")
    if not isinstance(data, dict) or "member_order" not in data or "estimator" not in data:
        raise DataError(f"{path} is not a cxr meta-learner description", hint="re-run `cxr stack`", path=path)
    return data
