"""What trained a member, as JSON-able data (for checkpoints and model cards): its data set and start weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxr.data.manifest import Manifest
from cxr.data.synthetic import MARKER_FILE
from cxr.session import file_sha256


def dataset_provenance(manifest: Manifest) -> dict[str, Any]:
    """Name, digest, images per class and split, and whether the images are synthetic."""
    root = Path(manifest.root)
    synthetic = any((d / MARKER_FILE).is_file() for d in (root, *root.parents[:1]))
    counts = manifest.counts()
    return {
        "name": root.name,
        "root": str(root),
        "manifest_digest": manifest.digest(),
        "images_per_class": {c: sum(counts[s][c] for s in counts) for c in manifest.classes},
        "images_per_split": {s: sum(v.values()) for s, v in counts.items()},
        "synthetic": synthetic,
    }


def weights_provenance(timm_name: str, pretrained: bool | str | Path) -> dict[str, Any]:
    """Where the member's starting weights came from: ``random``, ``timm`` (with its tag) or ``file``."""
    if pretrained is False:
        return {"source": "random"}
    if pretrained is True:
        import timm

        cfg = timm.get_pretrained_cfg(timm_name)
        tag = getattr(cfg, "tag", None) if cfg is not None else None
        return {"source": "timm", "tag": f"{timm_name}.{tag}" if tag else timm_name}
    path = Path(pretrained)
    if path.is_dir():
        found = [path / f"{timm_name}{s}" for s in (".safetensors", ".pth", ".pt", ".bin")]
        files = [p for p in found if p.is_file()]
        if not files:
            return {"source": "folder", "path": str(path)}
        path = files[0]
    return {"source": "file", "file": path.name, "path": str(path), "sha256": file_sha256(path)}
