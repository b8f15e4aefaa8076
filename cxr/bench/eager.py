"""Where cxr-bench finds its optional PyTorch eager reference, without importing torch itself.

The reference lives on the training side (``cxr.train.torch_reference``); this module only says whether
torch is installed and hands that module over by name when it is, so the runtime never imports torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

NO_TORCH = "PyTorch eager reference skipped: torch is not installed (pip install 'cxr-toolkit[train]')"
REFERENCE_MODULE = "cxr.train.torch_reference"


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def reference() -> ModuleType:
    """The training-side reference module (call only when ``torch_installed()``)."""
    return importlib.import_module(REFERENCE_MODULE)
