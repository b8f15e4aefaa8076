"""PreprocessSpec and ModelMetadata: JSON round trip, and files without cxr metadata are refused."""

from __future__ import annotations

import json

import pytest

from cxr.errors import ModelError
from cxr.labels import CLASSES, NOTICE
from cxr.spec import META_CLASSES, META_FORMAT, ModelMetadata, PreprocessSpec


@pytest.mark.parametrize("size", [(224, 224), (64, 48)])
def test_metadata_round_trip(size: tuple[int, int]) -> None:
    meta = ModelMetadata(
        classes=CLASSES,
        preprocess=PreprocessSpec(input_size=size),
        input_format="uint8_gray",
        card={"timm_name": "vgg19", "metrics": {"macro_f1": 0.5}},
    )
    props = meta.to_props()
    assert all(isinstance(v, str) for v in props.values())
    back = ModelMetadata.from_props(props)
    assert back.classes == CLASSES and back.preprocess == meta.preprocess
    assert back.input_format == "uint8_gray"
    assert back.card["timm_name"] == "vgg19" and back.card["notice"] == NOTICE


def test_missing_metadata_says_how_to_reexport() -> None:
    with pytest.raises(ModelError) as e:
        ModelMetadata.from_props({}, source="foreign.onnx")
    assert "foreign.onnx has no cxr metadata" in e.value.message
    assert e.value.hint and "cxr export" in e.value.hint


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        (META_FORMAT, "99", "format 99"),
        (META_CLASSES, '["a", "a"]', "invalid class list"),
        (META_CLASSES, "not json", "malformed"),
    ],
)
def test_bad_metadata_is_refused(key: str, value: str, match: str) -> None:
    props = ModelMetadata().to_props()
    props[key] = value
    with pytest.raises(ModelError, match=match):
        ModelMetadata.from_props(props)


@pytest.mark.parametrize(
    "kwargs",
    [{"input_size": (4, 4)}, {"std": (0.0, 1.0, 1.0)}, {"mean": (0.5,)}, {"interpolation": "nearest"}],
)
def test_bad_spec_is_refused(kwargs: dict) -> None:
    with pytest.raises(ModelError):
        PreprocessSpec(**kwargs)


def test_spec_json_is_plain_data() -> None:
    d = json.loads(json.dumps(PreprocessSpec().to_dict()))
    assert PreprocessSpec.from_dict(d) == PreprocessSpec()
