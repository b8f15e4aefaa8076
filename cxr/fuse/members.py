"""Load the members and the meta-learner to fuse, and refuse any combination that cannot be fused.

Takes: member ONNX paths (``RUN_DIR/onnx/<name>[.fp16|.int8].onnx``) and ``stack/meta.onnx``. Makes:
``MemberModel`` per member and ``MetaModel``; each refusal names the member and the fix; ``int8_members``
picks which members enter the INT8 ensemble quantized and which stay FP32, and why.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import onnx

from cxr.errors import ModelError
from cxr.session import file_sha256
from cxr.spec import CARD_MEMBER_ORDER, OUTPUT_LOGITS, ModelMetadata, PreprocessSpec
from cxr.stack.features import check_member_order

log = logging.getLogger(__name__)

VARIANT_SUFFIXES = ("fp16", "int8")


@dataclass(frozen=True)
class MemberModel:
    name: str
    path: Path
    model: onnx.ModelProto
    meta: ModelMetadata
    input_name: str
    output_name: str
    input_type: int  # onnx.TensorProto elem type
    output_type: int
    opsets: dict[str, int]
    sha256: str

    @property
    def input_size(self) -> tuple[int, int]:
        return self.meta.preprocess.input_size

    @property
    def card(self) -> dict[str, Any]:
        return dict(self.meta.card)

    @property
    def metrics(self) -> Any:
        """The member's validation metrics (card key ``metrics``, or ``val_metrics`` as `cxr export` writes)."""
        return self.card.get("metrics", self.card.get("val_metrics"))


@dataclass(frozen=True)
class MetaModel:
    path: Path
    model: onnx.ModelProto
    info: dict[str, Any]
    sha256: str

    @property
    def member_order(self) -> tuple[str, ...]:
        return tuple(self.info.get(CARD_MEMBER_ORDER, ()))


def graph_spec(members: Sequence[MemberModel], size: tuple[int, int]) -> PreprocessSpec:
    """The fused graph's preprocessing: the first member's channels, mean and std at the fused ``size``."""
    first = members[0].meta.preprocess
    return PreprocessSpec(input_size=size, channels=first.channels, mean=first.mean, std=first.std)


def opsets_of(model: onnx.ModelProto) -> dict[str, int]:
    out: dict[str, int] = {}
    for o in model.opset_import:
        domain = "" if o.domain in ("", "ai.onnx") else o.domain
        out[domain] = max(out.get(domain, 0), int(o.version))
    return out


def member_name_from_path(path: Path) -> str:
    name = Path(path).name.removesuffix(".onnx")
    for v in VARIANT_SUFFIXES:
        name = name.removesuffix(f".{v}")
    return name


def variant_path(path: Path, variant: str) -> Path:
    """``onnx/<name>.onnx`` -> ``onnx/<name>.<variant>.onnx``."""
    return Path(path).with_name(f"{member_name_from_path(path)}.{variant}.onnx")


def int8_members(members: Sequence[MemberModel]) -> tuple[list[MemberModel], dict[str, str]]:
    """The members of the INT8 ensemble, in order, and {member kept in FP32: why}.

    A member enters as its ``<name>.int8.onnx`` when that file exists and its card does not say NNCF's accuracy
    control missed its bar (``int8_missed_bar``); otherwise as the FP32 member itself.
    """
    chosen: list[MemberModel] = []
    in_float: dict[str, str] = {}
    for m in members:
        path = variant_path(m.path, "int8")
        quantized = load_member(path) if path.is_file() else None
        why = f"no {path.name}" if quantized is None else int8_missed_bar(quantized.card)
        if quantized is None or why is not None:
            chosen.append(m)
            in_float[m.name] = str(why)
        else:
            chosen.append(quantized)
    return chosen, in_float


def int8_missed_bar(card: Mapping[str, Any]) -> str | None:
    """Why a member INT8 card (``cxr.export.quantize.make_int8``) says its accuracy control missed its bar, or
    None: its mean probability change on val is above ``max_probability_change``. Cards without both numbers
    (accuracy control off, older files) do not say so."""
    settings = card.get("variant_settings") or {}
    bar, change = settings.get("max_probability_change"), settings.get("val_mean_probability_change")
    if not (_is_number(bar) and _is_number(change) and change > bar):
        return None
    return f"its INT8 accuracy control missed its bar: mean probability change on val {change:g} > {bar:g}"


def _is_number(x: Any) -> TypeGuard[float]:
    return isinstance(x, int | float) and not isinstance(x, bool)


def load_member(path: Path) -> MemberModel:
    """One exported member, refused with the fix when it cannot be part of a fused graph."""
    path = Path(path)
    model = _read_onnx(path)
    meta = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, source=str(path))
    if meta.input_format != "float_normalized":
        raise ModelError(
            f"{path} takes '{meta.input_format}' input; a fused member must be a single exported model taking "
            "normalised float input",
            hint="pass the members from RUN_DIR/onnx, not an already fused ensemble",
            path=path,
        )
    data_input, output = _image_input_and_logits(model, path)
    _check_input_shape(data_input, meta, path)
    name = str(meta.card.get("name") or meta.card.get("member") or member_name_from_path(path))
    return MemberModel(
        name=name,
        path=path,
        model=model,
        meta=meta,
        input_name=data_input.name,
        output_name=output.name,
        input_type=data_input.type.tensor_type.elem_type,
        output_type=output.type.tensor_type.elem_type,
        opsets=opsets_of(model),
        sha256=file_sha256(path),
    )


def _read_onnx(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ModelError(
            f"member model {path} does not exist",
            hint="export the members first (`cxr export RUN_DIR`)",
            path=path,
        )
    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf raises DecodeError and friends for a damaged file
        raise ModelError(f"{path} is not a readable ONNX file: {e}", hint="re-export it", path=path) from e


def _image_input_and_logits(
    model: onnx.ModelProto, path: Path
) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    """The one data input (initializers aside) and the ``logits`` output (else the first output)."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or not model.graph.output:
        raise ModelError(
            f"{path} has {len(inputs)} data inputs and {len(model.graph.output)} outputs; a member has one "
            "image input and a logits output",
            hint="re-export it with `cxr export`",
            path=path,
        )
    outputs = {o.name: o for o in model.graph.output}
    return inputs[0], outputs.get(OUTPUT_LOGITS, model.graph.output[0])


def _check_input_shape(data_input: onnx.ValueInfoProto, meta: ModelMetadata, path: Path) -> None:
    """[N, C, H, W] with C and H, W those of the metadata (or left dynamic)."""
    dims = data_input.type.tensor_type.shape.dim
    static = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    h, w = meta.preprocess.input_size
    if (
        len(static) != 4
        or static[1] not in (None, meta.preprocess.channels)
        or static[2:] not in ((h, w), (None, None))
    ):
        raise ModelError(
            f"{path}: graph input shape {list(static)} does not match its metadata "
            f"([N, {meta.preprocess.channels}, {h}, {w}])",
            hint="re-export the member so that its metadata describes its input",
            path=path,
        )


def load_meta(path: Path) -> MetaModel:
    from cxr.stack.to_onnx import meta_info

    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"meta-learner {path} does not exist",
            hint="train it first (`cxr stack RUN_DIR` writes stack/meta.onnx)",
            path=path,
        )
    model = onnx.load(str(path))
    return MetaModel(path=path, model=model, info=meta_info(model, str(path)), sha256=file_sha256(path))


def check_compatible(members: Sequence[MemberModel], meta: MetaModel) -> None:
    """Refuse members that cannot be fused with each other or with this meta-learner."""
    if not members:
        raise ModelError("no members to fuse", hint="pass the member ONNX files")
    names = [m.name for m in members]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ModelError(f"member(s) {', '.join(dupes)} given twice", hint="pass each member once")
    check_member_order(meta.member_order, names, what=f"fusing with {meta.path}")
    ref = members[0]
    classes = tuple(meta.info.get("classes", ()))
    recorded = dict(zip(meta.member_order, meta.info.get("member_checkpoints", []), strict=False))
    for m in members:
        if m.meta.classes != classes:
            raise ModelError(
                f"member '{m.name}' has class order {list(m.meta.classes)} but the meta-learner {meta.path} was "
                f"trained with {list(classes)}",
                hint="re-export the member from the checkpoint trained in this run",
                path=m.path,
            )
        if m.opsets.get("", 0) != ref.opsets.get("", 0):
            raise ModelError(
                f"member '{m.name}' uses ONNX opset {m.opsets.get('', 0)} but member '{ref.name}' uses "
                f"{ref.opsets.get('', 0)}",
                hint="export every member with the same opset (cxr exports opset 17)",
                path=m.path,
            )
        want = str(recorded.get(m.name) or "")
        have = str(m.card.get("checkpoint_sha256") or "")
        if want and have and want != have:
            raise ModelError(
                f"member '{m.name}' ({m.path}) was exported from checkpoint {have[:12]}, but the meta-learner was "
                f"trained on predictions of checkpoint {want[:12]}",
                hint="re-export the member from the current checkpoint, or re-train the meta-learner",
                path=m.path,
            )
