"""`cxr listen`: the DICOM node (receives radiographs by C-STORE, sends SR + secondary capture to the PACS).

Every option can also come from a `CXR_*` environment variable (shown in --help), like `cxr serve`.
pynetdicom is imported inside the command (the `dicom` extra), so `cxr --help` works without it.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from cxr.cli.common import (
    PrecisionChoice,
    ProviderChoice,
    env_option,
    handle_errors,
    require_extra,
    setup_logging,
)
from cxr.errors import ConfigError

LIMITS = "Limits"
RETRY = "Retries"


@handle_errors
def listen(
    model: Annotated[
        Path, typer.Option("--model", "-m", envvar="CXR_MODEL", help="The cxr ONNX model (fused ensemble).")
    ],
    spool: Annotated[
        Path,
        env_option(
            "CXR_SPOOL", "Durable spool folder (received -> predicted -> sent | failed); replayed on start."
        ),
    ],
    forward: Annotated[
        str | None, env_option("CXR_FORWARD", "Send the SR and SC by C-STORE to AET@HOST:PORT (the PACS).")
    ] = None,
    forward_url: Annotated[
        str | None,
        env_option(
            "CXR_FORWARD_URL", "Or by DICOMweb STOW-RS to this base URL (e.g. http://pacs/dicom-web)."
        ),
    ] = None,
    port: Annotated[int, env_option("CXR_PORT", "DICOM port (0: any free port).")] = 11112,
    host: Annotated[
        str, env_option("CXR_HOST", "Address to bind; 0.0.0.0 exposes the node to the network.")
    ] = "127.0.0.1",
    ae_title: Annotated[str, env_option("CXR_AE_TITLE", "This node's AE title.")] = "CXR",
    allow_ae: Annotated[
        str,
        env_option("CXR_ALLOW_AE", "Calling AE titles allowed, comma-separated (empty: any is accepted)."),
    ] = "",
    max_associations: Annotated[
        int, env_option("CXR_MAX_ASSOCIATIONS", "Concurrent associations.", LIMITS)
    ] = 8,
    max_pdu: Annotated[
        int, env_option("CXR_MAX_PDU", "Largest PDU received, bytes (0: any).", LIMITS)
    ] = 262_144,
    max_instance_mb: Annotated[
        float, env_option("CXR_MAX_INSTANCE_MB", "Larger instances get 0xA700.", LIMITS)
    ] = 256.0,
    retry_initial: Annotated[float, env_option("CXR_RETRY_INITIAL", "First retry delay, s.", RETRY)] = 1.0,
    retry_max: Annotated[float, env_option("CXR_RETRY_MAX", "Longest retry delay, s.", RETRY)] = 60.0,
    retry_budget: Annotated[
        float, env_option("CXR_RETRY_BUDGET", "Seconds of retries before failed/.", RETRY)
    ] = 3600.0,
    provider: Annotated[ProviderChoice, env_option("CXR_PROVIDER", "onnxruntime provider, or openvino.")] = (
        ProviderChoice.auto
    ),
    threads: Annotated[
        int | None, env_option("CXR_THREADS", "Inference threads (default: all cores).")
    ] = None,
    precision: Annotated[
        PrecisionChoice,
        env_option(
            "CXR_PRECISION",
            "auto: the fastest verified for this CPU (the heatmap graph, in fp32/bf16, when beside the model); "
            "int8: the verified INT8 graph, secondary captures without a heatmap.",
        ),
    ] = PrecisionChoice.auto,
    debug: Annotated[bool, typer.Option("--debug", envvar="CXR_DEBUG_LOG", help="Debug logging.")] = False,
) -> None:
    """Run the DICOM node: a Storage SCP (CR, DX, Secondary Capture; C-ECHO) that predicts every image and
    sends its structured report and secondary capture to the PACS. Decision support only, not a diagnosis."""
    from cxr.dicom.forward import Backoff, Destination, parse_destination
    from cxr.runtime.locate import check_model_file

    check_model_file(model)
    if (forward is None) == (forward_url is None):
        raise ConfigError(
            "give exactly one destination: --forward AET@HOST:PORT or --forward-url URL",
            hint="e.g. --forward ORTHANC@127.0.0.1:4242 (or CXR_FORWARD)",
        )
    dest: Destination = parse_destination(forward) if forward else Destination.stow(str(forward_url))
    setup_logging(debug)
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if debug else logging.WARNING)  # a line per PDU
    require_extra("cxr listen", "dicom", "pydicom", "pynetdicom")
    from cxr.dicom.node import DicomNode, NodeConfig

    cfg = NodeConfig(
        model=model,
        forward=dest,
        spool=spool,
        port=port,
        host=host,
        ae_title=ae_title,
        allow_ae=tuple(a.strip() for a in allow_ae.split(",") if a.strip()),
        max_pdu=max_pdu,
        max_associations=max_associations,
        max_instance_bytes=int(max_instance_mb * 1024 * 1024),
        backoff=Backoff(retry_initial, retry_max, retry_budget),
        provider=provider.value,
        threads=threads,
        precision=precision.value,
    )
    node = DicomNode(cfg)

    def _terminate(signum: int, frame: Any) -> None:  # SIGTERM (docker stop) ends like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    node.start()
    typer.echo(f"cxr listen: {cfg.ae_title}@{cfg.host}:{node.port} -> {dest} (spool {spool})", err=True)
    try:
        node.wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the normal way to stop a server, exit 0
        typer.echo("cxr listen: stopping (what is not sent yet stays in the spool)", err=True)
    finally:
        node.stop()
