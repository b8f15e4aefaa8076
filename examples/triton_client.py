"""Query a cxr model served by Triton Inference Server, preprocessing images exactly as `cxr-predict` does.

Takes: image files, the model folder written by `cxr export-triton` (its cxr.json says the model's input
name, data type, classes and preprocessing) and a Triton HTTP endpoint. Makes: one JSON line per image
with the class probabilities (and member probabilities for an ensemble) and the decision-support notice.

    pip install 'tritonclient[http]'          # not a cxr dependency; only this example needs it
    cxr export-triton --model fused.onnx --output triton_repo
    tritonserver --model-repository=triton_repo   # elsewhere, e.g. in NVIDIA's container
    python examples/triton_client.py --url localhost:8000 --model-dir triton_repo/fused image1.png ...

Preprocessing is cxr's own (``cxr.imaging.decode.decode_gray`` then ``cxr.imaging.preprocess
.to_model_input``), so Triton sees the same tensor as onnxruntime sees under ``cxr-predict``;
``build_batch`` needs neither tritonclient nor a server and is tested against ``Predictor.prepare``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr.errors import CxrError, ModelError
from cxr.imaging.decode import decode_gray
from cxr.imaging.preprocess import to_model_input
from cxr.labels import NOTICE
from cxr.spec import ModelMetadata

INSTALL_HINT = "pip install 'tritonclient[http]'"


@dataclass(frozen=True)
class ServedModel:
    """What a client needs to know about a model in a Triton repository, read from its cxr.json."""

    name: str
    version: int
    metadata: ModelMetadata
    input_name: str
    input_datatype: str  # Triton wire datatype, e.g. "UINT8" or "FP32"
    output_names: tuple[str, ...]
    max_batch_size: int  # 0: the model has no batch axis

    @property
    def normalized_input(self) -> bool:
        return self.metadata.input_format == "float_normalized"


def load_served_model(model_dir: Path) -> ServedModel:
    """Read ``MODEL_DIR/cxr.json`` (written by `cxr export-triton`)."""
    info_path = Path(model_dir) / "cxr.json"
    if not info_path.is_file():
        raise ModelError(
            f"{info_path} not found: {model_dir} is not a model folder written by `cxr export-triton`",
            hint="pass --model-dir REPOSITORY/MODEL_NAME (the folder that holds config.pbtxt and cxr.json)",
            path=info_path,
        )
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        sig = info["signature"]
        (inp,) = sig["inputs"]
        return ServedModel(
            name=Path(model_dir).resolve().name,
            version=int(info["version"]),
            metadata=ModelMetadata.from_props(info["metadata_props"], source=str(info_path)),
            input_name=str(inp["name"]),
            input_datatype=str(inp["datatype"]),
            output_names=tuple(str(o["name"]) for o in sig["outputs"]),
            max_batch_size=int(info["max_batch_size"]),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ModelError(
            f"{info_path} is malformed ({e!r})", hint="re-run `cxr export-triton`", path=info_path
        ) from e


def build_batch(images: Sequence[Path | str | bytes | np.ndarray], metadata: ModelMetadata) -> np.ndarray:
    """Images -> the model's input batch, exactly as the cxr runtime prepares it.

    Files and bytes are decoded with cxr's decoder (DICOM, 16-bit PNG, EXIF... handled the same way);
    arrays must already be uint8 [H, W] grayscale. The result is uint8 [N, 1, h, w] for a fused model and
    normalised float32 [N, C, h, w] for a single member.
    """
    grays = [img if isinstance(img, np.ndarray) else decode_gray(img) for img in images]
    return to_model_input(grays, metadata.preprocess, normalized=metadata.input_format == "float_normalized")


def chunks(n: int, max_batch_size: int) -> list[range]:
    """Index ranges of at most ``max_batch_size`` (1 when the model has no batch axis)."""
    step = max(max_batch_size, 1)
    return [range(i, min(i + step, n)) for i in range(0, n, step)]


def to_rows(
    served: ServedModel, sources: Sequence[str], outputs: dict[str, np.ndarray]
) -> list[dict[str, Any]]:
    """Triton's output arrays -> one JSON-ready dict per image."""
    classes = served.metadata.classes
    if "probabilities" in outputs:
        probs = outputs["probabilities"].reshape(len(sources), -1).astype(np.float64)
    else:  # a single member: softmax of its logits, as cxr's Predictor does
        z = outputs["logits"].reshape(len(sources), -1).astype(np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
    members = outputs.get("member_probabilities")
    names = tuple(served.metadata.card.get("member_order", ()))
    rows = []
    for i, src in enumerate(sources):
        k = int(np.argmax(probs[i]))
        row: dict[str, Any] = {
            "source": src,
            "label": classes[k],
            "probability": float(probs[i, k]),
            "probabilities": {c: float(v) for c, v in zip(classes, probs[i], strict=True)},
        }
        if members is not None:
            m = members[i]
            row["member_probabilities"] = {
                (names[j] if j < len(names) else f"member_{j}"): {
                    c: float(v) for c, v in zip(classes, m[j], strict=True)
                }
                for j in range(m.shape[0])
            }
        row["notice"] = NOTICE
        rows.append(row)
    return rows


def infer(client: Any, httpclient: Any, served: ServedModel, batch: np.ndarray) -> dict[str, np.ndarray]:
    """One Triton request for a prepared batch; returns every output by name."""
    # Batched models take [N, ...]; a model without a batch axis takes its full fixed shape, which a
    # one-image chunk already has.
    inp = httpclient.InferInput(served.input_name, list(batch.shape), served.input_datatype)
    inp.set_data_from_numpy(batch, binary_data=True)
    wanted = [httpclient.InferRequestedOutput(n, binary_data=True) for n in served.output_names]
    result = client.infer(served.name, [inp], model_version=str(served.version), outputs=wanted)
    return {n: np.asarray(result.as_numpy(n)) for n in served.output_names}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, DICOM...)")
    p.add_argument("--model-dir", type=Path, required=True, help="REPOSITORY/MODEL folder (holds cxr.json)")
    p.add_argument("--url", default="localhost:8000", help="Triton HTTP endpoint host:port")
    p.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException
    except ImportError:
        sys.stderr.write(
            f"error: this example needs tritonclient, which is not installed\n  hint: {INSTALL_HINT}\n"
        )
        return 2
    try:
        served = load_served_model(args.model_dir)
        client = httpclient.InferenceServerClient(
            url=args.url, connection_timeout=args.timeout, network_timeout=args.timeout
        )
        if not client.is_model_ready(served.name, str(served.version)):
            sys.stderr.write(
                f"error: Triton at {args.url} has no ready model {served.name} v{served.version}\n"
            )
            return 1
        sources = [str(p) for p in args.images]
        for idx in chunks(len(sources), served.max_batch_size):
            batch = build_batch([args.images[i] for i in idx], served.metadata)
            outputs = infer(client, httpclient, served, batch)
            for row in to_rows(served, [sources[i] for i in idx], outputs):
                sys.stdout.write(json.dumps(row) + "\n")
    except CxrError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    except InferenceServerException as e:
        sys.stderr.write(f"error: Triton at {args.url} refused the request: {e}\n")
        return 1
    except OSError as e:  # connection refused, DNS failure, timeout
        sys.stderr.write(
            f"error: cannot reach Triton at {args.url}: {e}\n  hint: check --url and that tritonserver runs\n"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
