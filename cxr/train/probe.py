"""The floor every transfer-learning result must beat: a logistic regression on frozen ImageNet features.

Makes ``RUN_DIR/baselines/linear_probe/{val,test}.csv`` (``cxr evaluate`` adds them) and ``probe.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr.data.manifest import Manifest, load_manifest
from cxr.errors import ConfigError, DataError
from cxr.metrics import classification_metrics
from cxr.spec import PreprocessSpec
from cxr.train.backbones import backbone_normalization, create_backbone, resolve_timm_name
from cxr.train.checkpoint import weights_provenance
from cxr.train.dataset import BadImages, make_dataset, make_loader
from cxr.train.predictions import PredictionTable, write_predictions

log = logging.getLogger(__name__)

PROBE_NAME = "linear_probe"


@dataclass(frozen=True)
class ProbeConfig:
    run_dir: Path
    backbone: str = "xception"
    pretrained: bool | Path = True  # True: timm's ImageNet weights; a path: a weights file or folder
    input_size: int = 224
    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    batch_size: int = 32
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.pretrained is False:
            raise ConfigError(
                "a linear probe on random features measures nothing",
                hint="give the ImageNet weights: --pretrained FILE (or true for timm's download)",
            )
        if self.input_size < 32:
            raise ConfigError(f"probe input size {self.input_size} is too small", hint="use 32 px or more")
        if not self.c_grid or min(self.c_grid) <= 0:
            raise ConfigError(f"c_grid {self.c_grid} must hold positive values")


@dataclass(frozen=True)
class ProbeResult:
    out_dir: Path
    c: float
    val_metrics: dict[str, Any]
    test_metrics: dict[str, Any]
    seconds: float
    n_train: int


def _features(
    model: torch.nn.Module, manifest: Manifest, split: str, spec: PreprocessSpec, batch: int
) -> Any:
    """(pooled features [N, F], labels [N], paths) of one split; unreadable images are left out."""
    dataset = make_dataset(manifest, split, spec, train=False)
    loader = make_loader(dataset, batch_size=batch, shuffle=False, num_workers=0, pin_memory=False)
    bad = BadImages(dataset, 1.0)
    feats, labels, index = [], [], []
    with torch.inference_mode():
        for b in loader:
            bad.add(b.bad)
            if b.x is None:
                continue
            f: Any = model.forward_head(model.forward_features(b.x), pre_logits=True)  # type: ignore[operator]
            feats.append(f.float().numpy())
            labels.append(b.y.numpy())
            index.append(b.index.numpy())
    if not feats:
        raise DataError(f"no readable image in the {split} split", hint="check the manifest's images")
    idx = np.concatenate(index)
    return np.concatenate(feats), np.concatenate(labels), tuple(dataset.rows[int(i)].path for i in idx)


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(y.size), y], 1e-12, 1.0))))


def _widen(clf: Any, x: np.ndarray, k: int) -> np.ndarray:
    p = np.zeros((x.shape[0], k), dtype=np.float64)
    p[:, np.asarray(clf.classes_, dtype=np.int64)] = clf.predict_proba(x)
    return p


def linear_probe(cfg: ProbeConfig) -> ProbeResult:
    """Fit the probe and write its predictions (see the module docstring)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    run_dir = Path(cfg.run_dir)
    manifest = load_manifest(run_dir / "manifest.csv")
    timm_name = resolve_timm_name(cfg.backbone)
    mean, std = backbone_normalization(cfg.backbone)
    spec = PreprocessSpec(input_size=(cfg.input_size, cfg.input_size), mean=mean, std=std)
    k = len(manifest.classes)
    with torch.random.fork_rng(devices=[]):
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        model = create_backbone(cfg.backbone, k, cfg.pretrained, seed=0).eval()
        data = {s: _features(model, manifest, s, spec, cfg.batch_size) for s in ("train", "val", "test")}
    scaler = StandardScaler().fit(data["train"][0])
    x = {s: scaler.transform(v[0]) for s, v in data.items()}
    fits = []
    for c in cfg.c_grid:
        clf = LogisticRegression(C=c, max_iter=5000).fit(x["train"], data["train"][1])
        fits.append((_log_loss(data["val"][1], _widen(clf, x["val"], k)), c, clf))
    _, best_c, clf = min(fits, key=lambda t: (t[0], t[1]))
    out = run_dir / "baselines" / PROBE_NAME
    metrics: dict[str, dict[str, Any]] = {}
    for split in ("val", "test"):
        probs = _widen(clf, x[split], k)
        y = data[split][1]
        m = classification_metrics(y, probs, tuple(manifest.classes))
        metrics[split] = {"accuracy": m.accuracy, "macro_f1": m.macro_f1, "n": m.n}
        table = PredictionTable(
            member=PROBE_NAME,
            split=split,
            manifest_digest=manifest.digest(),
            classes=tuple(manifest.classes),
            paths=data[split][2],
            labels=tuple(manifest.classes[int(i)] for i in y),
            probs=probs,
        )
        write_predictions(table, out)
    seconds = time.perf_counter() - start
    info = {
        "method": "multinomial logistic regression on standardised frozen pooled features",
        "backbone": timm_name,
        "weights": weights_provenance(timm_name, cfg.pretrained),
        "preprocess": spec.to_dict(),
        "c": best_c,
        "c_grid": list(cfg.c_grid),
        "chosen_by": "validation log loss",
        "n_train": int(data["train"][1].size),
        "metrics": metrics,
        "seconds": round(seconds, 1),
    }
    (out / "probe.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    log.info("linear probe (%s, C=%g): test accuracy %.3f", timm_name, best_c, metrics["test"]["accuracy"])
    return ProbeResult(out, best_c, metrics["val"], metrics["test"], seconds, int(data["train"][1].size))


def describe_probe(cfg: ProbeConfig, res: ProbeResult) -> str:
    """What `cxr train probe` prints: the probe and its test accuracy and macro-F1."""
    t = res.test_metrics
    macro = "undefined" if t["macro_f1"] is None else format(t["macro_f1"], ".1%")
    return (
        f"linear probe ({cfg.backbone}, frozen, {cfg.input_size} px, C={res.c:g}, {res.n_train} training images, "
        f"{res.seconds:.0f} s): test accuracy {t['accuracy']:.1%}, macro-F1 {macro} on {t['n']} images\n"
        f"wrote {res.out_dir} (`cxr evaluate` adds it to the comparison as a baseline)"
    )
