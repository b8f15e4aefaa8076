"""Around onnxruntime's converter and quantizer: a quieter log while they run, and a calibration reader.

Takes: a preprocessed float32 array [N, C, H, W] (``CalibrationReader``). Makes: the ``CalibrationDataReader``
that ``quantize_static`` pulls batches from (fed as ``INPUT_NAME``), and ``quiet_onnxruntime``, a scope in
which the INFO records those tools log (whole node protos) are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from cxr.export.export_types import INPUT_NAME


class _OnnxruntimeChatter(logging.Filter):
    """Drops onnxruntime's converter/quantizer INFO records (it logs whole node protos at INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "onnxruntime" not in record.pathname


@contextmanager
def quiet_onnxruntime() -> Iterator[None]:
    """Scoped: onnxruntime's tools log on the root logger and their module loggers."""
    flt = _OnnxruntimeChatter()
    loggers = [
        logging.getLogger(),
        *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("onnxruntime")),
    ]
    for lg in loggers:
        lg.addFilter(flt)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(flt)


class CalibrationReader(CalibrationDataReader):  # type: ignore[misc]
    """onnxruntime ``CalibrationDataReader`` over a preprocessed array, in batches."""

    def __init__(self, data: np.ndarray, batch: int) -> None:
        super().__init__()
        self._batches: Iterator[np.ndarray] = iter(
            [np.ascontiguousarray(data[i : i + batch], dtype=np.float32) for i in range(0, len(data), batch)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}
