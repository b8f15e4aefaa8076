"""`cxr export-triton --model MODEL --output DIR`: a Triton model repository and a KServe manifest."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cxr.cli.common import handle_errors, model_option, output_option, warn
from cxr.labels import NOTICE


class TrtPrecisionChoice(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


@handle_errors
def export_triton(
    model: Annotated[
        Path,
        model_option("A cxr ONNX model (the fused ensemble, its INT8 variant, a member)."),
    ],
    output: Annotated[Path, output_option("The Triton model repository folder to write into.")],
    name: Annotated[
        str | None, typer.Option(help="Model folder name in the repository (default: the file's stem).")
    ] = None,
    version: Annotated[int, typer.Option(help="Version folder to write the model into.")] = 1,
    max_batch_size: Annotated[int, typer.Option(help="Largest batch Triton may form.")] = 8,
    preferred_batch_size: Annotated[
        list[int] | None,
        typer.Option(help="Batch size the dynamic batcher aims for (repeatable; default: max/2 and max)."),
    ] = None,
    max_queue_delay_us: Annotated[
        int, typer.Option(help="How long a request may wait for a batch to fill, in microseconds.")
    ] = 1000,
    gpu_instances: Annotated[int, typer.Option(help="Model instances per GPU (0: no GPU instances).")] = 1,
    cpu_instances: Annotated[int, typer.Option(help="Model instances on the CPU (0: none).")] = 0,
    gpu: Annotated[
        list[int] | None, typer.Option(help="GPU id for the GPU instances (repeatable; default: every GPU).")
    ] = None,
    cpu_threads: Annotated[
        int | None, typer.Option(help="onnxruntime intra-op threads per instance (default: backend's).")
    ] = None,
    tensorrt: Annotated[
        bool, typer.Option(help="Add the TensorRT execution accelerator to GPU instances.")
    ] = False,
    trt_precision: Annotated[
        TrtPrecisionChoice, typer.Option(help="TensorRT precision; auto: fp16, or int8 for an INT8 model.")
    ] = TrtPrecisionChoice.auto,
    trt_workspace_mib: Annotated[int, typer.Option(help="TensorRT workspace in MiB.")] = 1024,
    link: Annotated[bool, typer.Option(help="Hard-link the model file instead of copying it.")] = False,
    force: Annotated[bool, typer.Option(help="Replace a model folder that holds another model.")] = False,
    kserve: Annotated[
        bool, typer.Option(help="Also write kserve-inferenceservice.yaml into the repository.")
    ] = True,
    storage_uri: Annotated[
        str | None, typer.Option(help="storageUri for the KServe manifest (default: a placeholder to edit).")
    ] = None,
) -> None:
    """Write a Triton model repository and a KServe manifest.

    OUTPUT/<name>/config.pbtxt, OUTPUT/<name>/<version>/model.onnx and a KServe manifest for MODEL.
    """
    from cxr.deploy.triton import STORAGE_URI_PLACEHOLDER, TritonConfig, write_triton_repository

    cfg = TritonConfig(
        model_name=name,
        version=version,
        max_batch_size=max_batch_size,
        preferred_batch_sizes=tuple(preferred_batch_size) if preferred_batch_size else None,
        max_queue_delay_us=max_queue_delay_us,
        gpu_instances=gpu_instances,
        cpu_instances=cpu_instances,
        gpus=tuple(gpu or ()),
        cpu_threads=cpu_threads,
        tensorrt=tensorrt,
        trt_precision=None if trt_precision is TrtPrecisionChoice.auto else trt_precision.value,  # type: ignore[arg-type]
        trt_workspace_mib=trt_workspace_mib,
        link=link,
        force=force,
        kserve=kserve,
        storage_uri=storage_uri or STORAGE_URI_PLACEHOLDER,
    )
    res = write_triton_repository(model, output, cfg)
    for line in _describe(res, placeholder=cfg.storage_uri == STORAGE_URI_PLACEHOLDER):
        typer.echo(line)
    for w in res.warnings:
        warn(f"warning: {w}")
    typer.echo(f"run: tritonserver --model-repository={res.repository.resolve()}")
    typer.echo(NOTICE)


def _describe(res, *, placeholder: bool) -> list[str]:
    """What ``write_triton_repository`` wrote: the files, the tensors Triton will see, the KServe manifest."""
    sig = res.signature
    lines = [
        f"Triton model '{res.model_name}' written to {res.model_dir}",
        f"  config:  {res.config_path}",
        f"  model:   {res.model_path} ({'hard-linked' if res.linked else 'copied'}, sha256 {res.sha256[:16]})",
    ]
    lines += [f"  input    {t.name}: {t.wire_type} {list(t.config_dims(sig.batched))}" for t in sig.inputs]
    lines += [f"  output   {t.name}: {t.wire_type} {list(t.config_dims(sig.batched))}" for t in sig.outputs]
    lines.append(
        f"  max_batch_size {res.max_batch_size}, precision {res.metadata.card.get('precision', 'fp32')}"
    )
    if res.kserve_path is not None:
        lines.append(f"  KServe:  {res.kserve_path}")
        if placeholder:
            lines.append("           (edit storageUri: it is a placeholder)")
    return lines
