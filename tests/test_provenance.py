"""Provenance travels with the model: what trained it is recorded, and the runtime warns about it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cxr.spec import provenance_warnings

REAL = {"name": "COVID-19_Radiography_Dataset", "synthetic": False}
SYNTH = {"name": "COVID-19_Radiography_Dataset", "synthetic": True}


@pytest.mark.parametrize(
    ("card", "expected"),
    [
        (
            {
                "dataset": REAL,
                "members": [{"pretrained": {"source": "timm"}}, {"pretrained": {"source": "random"}}],
            },
            [],
        ),
        ({"dataset": SYNTH, "members": [{"pretrained": {"source": "file"}}]}, ["SYNTHETIC"]),
        ({"dataset": REAL, "members": [{"pretrained": {"source": "random"}}] * 2}, ["random weights"]),
        ({"dataset": SYNTH, "pretrained": {"source": "random"}}, ["SYNTHETIC", "random weights"]),  # a member
        ({"kind": "ensemble", "members": [{"name": "a"}]}, ["does not say what data and weights"]),
        ({}, ["does not say what data and weights"]),
    ],
)
def test_warnings_name_synthetic_data_random_weights_and_missing_provenance(
    card: dict, expected: list
) -> None:
    got = provenance_warnings(card)
    assert len(got) == len(expected)
    for text, words in zip(got, expected, strict=True):
        assert words in text


def test_training_records_data_and_weights(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    from cxr.data.manifest import SplitConfig, build_manifest
    from cxr.data.synthetic import SynthConfig, synthesize
    from cxr.train.checkpoint import dataset_provenance, weights_provenance

    res = synthesize(SynthConfig(tmp_path / "s", per_class=10, seed=0, size=40))
    manifest = build_manifest(SplitConfig(res.root, tmp_path / "m.csv", seed=0)).manifest
    d = dataset_provenance(manifest)
    assert d["synthetic"] is True and d["manifest_digest"] == manifest.digest()
    assert sum(d["images_per_class"].values()) == len(manifest.rows)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not really weights, but hashed all the same")
    assert (
        weights_provenance("legacy_xception", weights)["sha256"]
        == hashlib.sha256(weights.read_bytes()).hexdigest()
    )
    assert weights_provenance("legacy_xception", False) == {"source": "random"}
    assert weights_provenance("legacy_xception", True) == {"source": "timm", "tag": "legacy_xception.tf_in1k"}
