"""A member's training history: ``metrics.jsonl`` (every value) and ``metrics.csv`` (the scalars) always,
a Comet experiment with ``tracking.comet`` (offline by default: ``comet upload`` sends it later)."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxr.errors import ConfigError
from cxr.train.config import TrackingConfig

log = logging.getLogger(__name__)


class MetricsLog:
    """Append-only epoch log; on resume, rows after the resumed epoch are dropped."""

    def __init__(self, member_dir: Path) -> None:
        self.jsonl = Path(member_dir) / "metrics.jsonl"
        self.csv = Path(member_dir) / "metrics.csv"

    def rows(self) -> list[dict[str, Any]]:
        if not self.jsonl.is_file():
            return []
        lines = self.jsonl.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def reset(self, keep_through_epoch: int = -1) -> None:
        """Keep the rows of epochs ``<= keep_through_epoch`` (all gone with the default)."""
        kept = [r for r in self.rows() if int(r.get("epoch", -1)) <= keep_through_epoch]
        self.jsonl.parent.mkdir(parents=True, exist_ok=True)
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        self._write_csv(kept)

    def append(self, row: Mapping[str, Any]) -> None:
        self.jsonl.parent.mkdir(parents=True, exist_ok=True)
        with self.jsonl.open("a", encoding="utf-8") as f:
            f.write(json.dumps(dict(row)) + "\n")
        self._write_csv(self.rows())

    def _write_csv(self, rows: list[dict[str, Any]]) -> None:
        flat = [flatten(r) for r in rows]
        with self.csv.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in flat for k in r)))
            w.writeheader()
            w.writerows(flat)


def flatten(row: Mapping[str, Any]) -> dict[str, Any]:
    """Scalars as they are; ``val.per_class.COVID.f1`` style keys for nested scalars; lists dropped."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, Mapping):
            for k, v in flatten(value).items():
                out[f"{key}.{k}"] = v
        elif not isinstance(value, list | tuple):
            out[key] = value
    return out


class Tracker:
    """Where the metrics go besides the log files: nowhere (this class) or Comet (``CometTracker``)."""

    def log_metrics(self, metrics: Mapping[str, Any], step: int, epoch: int) -> None:
        return None

    def end(self) -> None:
        return None


class CometTracker(Tracker):
    """One Comet experiment per member; auto-logging is off, cxr logs what it computes."""

    def __init__(self, cfg: TrackingConfig, run_dir: Path, member: str, params: Mapping[str, Any]) -> None:
        try:
            import comet_ml
        except ImportError as e:
            raise ConfigError(
                "tracking.comet is true but comet_ml is not installed",
                hint="pip install comet_ml (offline mode needs no account), or set tracking.comet: false",
            ) from e
        quiet: dict[str, Any] = {f"auto_{k}_logging": False for k in ("metric", "param", "output")}
        quiet |= {f"log_{k}": False for k in ("code", "graph", "git_metadata", "git_patch")}
        quiet["display_summary_level"] = 0
        try:
            kind: Any = comet_ml.Experiment
            if cfg.comet_offline:
                out = Path(cfg.comet_offline_dir or Path(run_dir) / "comet")
                out.mkdir(parents=True, exist_ok=True)
                kind, quiet["offline_directory"] = comet_ml.OfflineExperiment, str(out)
            self.experiment = kind(project_name=cfg.comet_project, workspace=cfg.comet_workspace, **quiet)
        except Exception as e:  # comet raises its own types for missing keys, network errors...
            raise ConfigError(
                f"cannot start a Comet experiment: {type(e).__name__}: {e}",
                hint="set COMET_API_KEY for online tracking, or tracking.comet_offline: true",
            ) from e
        self.experiment.set_name(member)
        self.experiment.log_parameters(flatten(params))

    def log_metrics(self, metrics: Mapping[str, Any], step: int, epoch: int) -> None:
        defined = {k: v for k, v in flatten(metrics).items() if v is not None}  # undefined: no point
        self.experiment.log_metrics(defined, step=step, epoch=epoch)

    def end(self) -> None:
        self.experiment.end()
