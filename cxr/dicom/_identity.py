"""Takes a model (or its file) and a source's UIDs; makes the model's identity and the results' UIDs.

Every UID cxr writes is a 2.25 UID (PS3.5 B.2: "2.25." and the integer of a UUID) whose UUID is a name-based
version 5 UUID (RFC 9562) of what identifies it, so re-processing the same source instance with the same model
file gives the same UIDs (a PACS then replaces, never duplicates). (pydicom's ``generate_uid(prefix=None,
entropy_srcs=...)`` ignores its entropy and returns a random UUID4 UID, so it is not used.) The names:
- an SR or SC instance: (source SOP Instance UID, model SHA-256, "sr" or "sc");
- its series: (source Study Instance UID, model SHA-256, "sr" or "sc"): one SR and one SC series per study
  and model, holding the results of every image of that study;
- the SR's device observer and tracking UIDs: from the model SHA-256 and the SR instance UID.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cxr

Kind = Literal["sr", "sc"]
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cxr:dicom-results:v1")


@dataclass(frozen=True)
class ModelIdentity:
    """The model a result comes from: its file name, cxr's version, the file's full SHA-256 and short id."""

    name: str
    version: str
    sha256: str
    model_id: str

    @classmethod
    def from_predictor(cls, predictor: Any) -> ModelIdentity:
        """The identity of a loaded ``cxr.runtime.Predictor`` (hashes its model file once more)."""
        from cxr.session import file_sha256

        path = Path(predictor.model_path)
        return cls(path.name, cxr.__version__, file_sha256(path), str(predictor.model_id))


def _uid(*parts: str) -> str:
    return f"2.25.{uuid.uuid5(_NAMESPACE, chr(0x1F).join(parts)).int}"


def instance_uid(source_sop_instance_uid: str, model: ModelIdentity, kind: Kind) -> str:
    """The SOP Instance UID of the ``kind`` result of one source instance."""
    return _uid("instance", str(source_sop_instance_uid), model.sha256, kind)


def series_uid(source_study_uid: str, model: ModelIdentity, kind: Kind) -> str:
    """The Series Instance UID of the ``kind`` results in one study."""
    return _uid("series", str(source_study_uid), model.sha256, kind)


def device_uid(model: ModelIdentity) -> str:
    """The SR's device observer UID: one per model file."""
    return _uid("device", model.sha256)


def tracking_uid(sr_instance_uid: str) -> str:
    """The SR measurement group's tracking UID."""
    return _uid("tracking", sr_instance_uid)
