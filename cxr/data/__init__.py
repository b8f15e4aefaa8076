"""The data stage: the deduplicated, stratified split manifest, and synthetic X-rays (numpy, Pillow)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxr.data.manifest import Manifest, ManifestResult, SplitConfig, build_manifest, load_manifest
    from cxr.data.synthetic import SynthConfig, SynthResult, synthesize

_EXPORTS = {
    "Manifest": "cxr.data.manifest",
    "ManifestResult": "cxr.data.manifest",
    "SplitConfig": "cxr.data.manifest",
    "build_manifest": "cxr.data.manifest",
    "load_manifest": "cxr.data.manifest",
    "SynthConfig": "cxr.data.synthetic",
    "SynthResult": "cxr.data.synthetic",
    "synthesize": "cxr.data.synthetic",
}

__all__ = [
    "Manifest",
    "ManifestResult",
    "SplitConfig",
    "SynthConfig",
    "SynthResult",
    "build_manifest",
    "load_manifest",
    "synthesize",
]


def __getattr__(name: str) -> Any:  # lazy: each module loads on first use
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
