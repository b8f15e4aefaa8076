"""The stacking stage: a scikit-learn meta-learner on member probabilities, and its ONNX form."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxr._lazy import lazy_exports

if TYPE_CHECKING:
    from cxr.stack.stack import MetaConfig, MetaResult, describe, fit_meta

__all__ = ["MetaConfig", "MetaResult", "describe", "fit_meta"]
__getattr__, __dir__ = lazy_exports(
    __name__, {"cxr.stack.stack": ["MetaConfig", "MetaResult", "describe", "fit_meta"]}
)
