"""Takes the model's name, size and ``TritonConfig``; makes a KServe InferenceService for Triton."""

from __future__ import annotations

import json
import math
import re

from cxr import __version__
from cxr.deploy.triton.config import TritonConfig
from cxr.labels import NOTICE


def _dns_name(name: str) -> str:
    """A DNS-1035 label for Kubernetes: lowercase letters, digits and '-', starting with a letter."""
    s = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not s.startswith("cxr"):
        s = f"cxr-{s}".rstrip("-")
    return s[:45].rstrip("-")


def kserve_resources(model_bytes: int, cfg: TritonConfig) -> dict[str, dict[str, str]]:
    """A starting point: every instance holds the weights once; ONNX Runtime needs about as much again."""
    instances = cfg.gpu_instances * max(len(cfg.gpus), 1) + cfg.cpu_instances
    gib = model_bytes / 2**30
    limit = max(2, math.ceil(2 + 2 * gib * instances))
    cpus = max(2, (cfg.cpu_threads or 2) * max(cfg.cpu_instances, 1))
    limits = {"cpu": str(cpus), "memory": f"{limit}Gi"}
    requests = {"cpu": str(max(1, cpus // 2)), "memory": f"{max(1, limit // 2)}Gi"}
    if cfg.gpu_instances:
        limits["nvidia.com/gpu"] = str(max(len(cfg.gpus), 1))
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"]
    return {"limits": limits, "requests": requests}


def render_kserve(name: str, model_bytes: int, cfg: TritonConfig) -> str:
    """A KServe ``InferenceService`` (serving.kserve.io/v1beta1) that serves the repository with Triton."""
    res = kserve_resources(model_bytes, cfg)
    j = json.dumps

    def block(key: str, d: dict[str, str]) -> list[str]:
        return [f"        {key}:"] + [f"          {j(k)}: {j(v)}" for k, v in d.items()]

    lines = [
        f"# Written by cxr {__version__} (`cxr export-triton`) for the Triton model repository beside it.",
        f"# {NOTICE}",
        "# Upload this folder (the repository root, which holds the model folder) to object storage and",
        "# set storageUri to it; KServe downloads it to /mnt/models and starts Triton on it.",
        "# Resources are a starting point sized from the model file: measure and adjust.",
        "apiVersion: serving.kserve.io/v1beta1",
        "kind: InferenceService",
        "metadata:",
        f"  name: {j(_dns_name(name))}",
        "  annotations:",
        f"    cxr/model-name: {j(name)}",
        f"    cxr/notice: {j(NOTICE)}",
        "spec:",
        "  predictor:",
        "    triton:",
        f"      storageUri: {j(cfg.storage_uri)}",
        '      protocolVersion: "v2"',
        "      resources:",
    ]
    lines += block("requests", res["requests"]) + block("limits", res["limits"])
    return "\n".join(lines) + "\n"
