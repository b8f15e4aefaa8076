"""Result types of the torch-free runtime (shared by cxr-predict, cxr-bench and the HTTP API)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cxr.labels import NOTICE


@dataclass(frozen=True)
class Reason:
    """Why the input gate marked an image not assessable: a stable code and a sentence for the reader."""

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class Prediction:
    """One image's result. ``error`` is set (and ``label`` is None) when the image could not be read."""

    source: str
    label: str | None
    confidence: float | None
    probabilities: Mapping[str, float] = field(default_factory=dict)
    member_probabilities: Mapping[str, Mapping[str, float]] | None = None
    provider: str = ""
    seconds: float = 0.0
    error: str | None = None
    notice: str = NOTICE
    # per class with an operating point (cxr.runtime.operating): probability >= its threshold; None: no points
    above_operating_point: Mapping[str, bool] | None = None
    # the input gate (cxr.runtime.assess): False with reasons when the image is outside what the model is for;
    # None when nothing was predicted (an error row)
    assessable: bool | None = None
    reasons: tuple[Reason, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Prediction:
        """The inverse of ``to_dict`` (reasons back as ``Reason`` objects)."""
        fields = dict(d)
        fields["reasons"] = tuple(Reason(r["code"], r["message"]) for r in fields.get("reasons") or ())
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "label": self.label,
            "confidence": self.confidence,
            "probabilities": dict(self.probabilities),
            "member_probabilities": None
            if self.member_probabilities is None
            else {k: dict(v) for k, v in self.member_probabilities.items()},
            "provider": self.provider,
            "seconds": self.seconds,
            "error": self.error,
            "assessable": self.assessable,
            "reasons": [r.to_dict() for r in self.reasons],
            "above_operating_point": None
            if self.above_operating_point is None
            else dict(self.above_operating_point),
            "notice": self.notice,
        }
