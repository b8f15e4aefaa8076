"""Takes the installed distributions; makes the one ``onnxruntime`` module, or an error when several builds
clash."""

from __future__ import annotations

import functools
import re
from importlib import metadata
from types import ModuleType

from cxr.errors import ProviderError

FLAVOURS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-openvino",
    "onnxruntime-directml",
    "onnxruntime-qnn",
    "onnxruntime-training",
    "ort-nightly",
    "ort-nightly-gpu",
)
INSTALL_HINT = "pip install -e '.[cpu]' in a clone of cxr (or '.[gpu]' on a machine with CUDA)"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.lru_cache(maxsize=1)
def installed_flavours() -> tuple[tuple[str, str], ...]:
    """(distribution, version) of every onnxruntime build installed, sorted; one entry per distribution."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = _normalise(dist.metadata["Name"] or "")
        if name in FLAVOURS:
            found.setdefault(name, dist.version)
    return tuple(sorted(found.items()))


def check_flavours(flavours: tuple[tuple[str, str], ...]) -> None:
    """ProviderError unless exactly one onnxruntime build is installed."""
    if not flavours:
        raise ProviderError("no onnxruntime is installed: cxr runs its models with it", hint=INSTALL_HINT)
    if len(flavours) > 1:
        names = [name for name, _ in flavours]
        listed = ", ".join(f"{name} {version}" for name, version in flavours)
        want = "gpu" if "onnxruntime-gpu" in names else "cpu"
        raise ProviderError(
            f"{len(flavours)} onnxruntime builds are installed ({listed}); they share one module, so which one "
            "runs is an accident of install order",
            hint=f"pip uninstall -y {' '.join(names)} && pip install -e '.[{want}]' in a clone of cxr",
        )


def onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module, after checking that exactly one build provides it."""
    check_flavours(installed_flavours())
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ProviderError(f"onnxruntime cannot be imported ({e})", hint=INSTALL_HINT) from e
    return ort
