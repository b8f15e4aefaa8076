"""The data stage: the deduplicated, stratified split manifest, and synthetic X-rays (numpy, Pillow)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxr._lazy import lazy_exports

if TYPE_CHECKING:
    from cxr.data.manifest import Manifest, ManifestResult, SplitConfig, build_manifest, load_manifest
    from cxr.data.synthetic import SynthConfig, SynthResult, synthesize

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
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "cxr.data.manifest": ["Manifest", "ManifestResult", "SplitConfig", "build_manifest", "load_manifest"],
        "cxr.data.synthetic": ["SynthConfig", "SynthResult", "synthesize"],
    },
)
