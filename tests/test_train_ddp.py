"""Training under DDP: 2 CPU processes (gloo) equal one process with the same global batch, rank 0 alone
writes, resume works, `torchrun -m cxr train base` works unchanged, and a batch 2 processes cannot share is
refused with a clear message.

The equivalence runs use timm's ``test_convnext`` (LayerNorm, no dropout): with BatchNorm each process
normalises its own share of the batch on CPUs (torch has no CPU SyncBatchNorm), which is not the same
computation as one process normalising the whole batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from cxr.data.manifest import SplitConfig, build_manifest  # noqa: E402
from cxr.data.synthetic import SynthConfig, synthesize  # noqa: E402
from cxr.errors import ConfigError  # noqa: E402
from cxr.train.checkpoint import load_checkpoint  # noqa: E402
from cxr.train.config import config_from_dict  # noqa: E402
from cxr.train.distributed import DistContext  # noqa: E402
from cxr.train.predictions import read_predictions  # noqa: E402
from cxr.train.run import train_member  # noqa: E402

EPOCHS = 3
WRITES = ("save_checkpoint", "link_checkpoint", "save_resume_state", "write_predictions", "metrics_row")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic images per class: 40 train (5 global batches of 8), 4 val, 4 test."""
    out = tmp_path_factory.mktemp("synth")
    res = synthesize(SynthConfig(out, per_class=12, seed=3, size=48))
    return build_manifest(SplitConfig(res.root, out / "manifest.csv", seed=0)).csv_path


def raw_cfg(run_dir: Path, manifest: Path, **train: Any) -> dict[str, Any]:
    return {
        "run_dir": str(run_dir),
        "seed": 0,
        "data": {"manifest": str(manifest)},
        "train": {
            "epochs": EPOCHS,
            "adapt_epochs": 1,
            "batch_size": 8,
            "eval_batch_size": 3,
            "adapt_lr": 1e-2,
            "finetune_lr": 1e-3,
            "device": "cpu",
            # FP32: these tests compare DDP's arithmetic with one process at 1e-4; bf16 (what `auto` picks on
            # CPUs with AVX512-BF16/AMX) rounds to 8 bits of mantissa, differently when the batch is split
            "precision": "fp32",
            "early_stopping": {"patience": 10},
            **train,
        },
        "models": [{"name": "tiny", "backbone": "test_convnext", "input_size": 32}],
    }


@pytest.fixture(scope="module")
def single(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one process, global batch 8."""
    run_dir = tmp_path_factory.mktemp("single")
    train_member(config_from_dict(raw_cfg(run_dir, manifest)), "tiny")
    return run_dir / "members" / "tiny"


def spawn(
    world: int, cfg: dict[str, Any], out: Path, stop_after_epoch: int | None = None
) -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    from tests.ddp_worker import run_rank

    out.mkdir(parents=True, exist_ok=True)
    init = out / "rendezvous"
    init.unlink(missing_ok=True)
    args = (world, str(init), cfg, "tiny", str(out), stop_after_epoch)
    mp.start_processes(run_rank, args=args, nprocs=world, join=True, start_method="spawn")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def rows(member_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (member_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_training(ddp: Path, ref: Path) -> None:
    """Same epochs, losses, validation metrics, weights and written probabilities (float tolerance)."""
    got, want = rows(ddp), rows(ref)
    assert [(r["epoch"], r["phase"]) for r in got] == [(r["epoch"], r["phase"]) for r in want]
    for g, w in zip(got, want, strict=True):
        assert g["train_images"] == w["train_images"]
        assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-4)
        assert g["train_accuracy"] == pytest.approx(w["train_accuracy"])
        assert g["lr_end"] == pytest.approx(w["lr_end"], rel=1e-9)
        assert g["val"]["loss"] == pytest.approx(w["val"]["loss"], rel=1e-4)
        assert g["val"]["confusion_matrix"] == w["val"]["confusion_matrix"]
        assert g["best"] == w["best"]
    a = load_checkpoint(ddp, "last").model.state_dict()
    b = load_checkpoint(ref, "last").model.state_dict()
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 1e-5, f"weights differ by up to {worst}"
    for split in ("val", "test"):
        p, q = (
            read_predictions(ddp / "predictions" / f"{split}.csv"),
            read_predictions(ref / "predictions" / f"{split}.csv"),
        )
        assert p.paths == q.paths
        np.testing.assert_allclose(p.probs, q.probs, atol=1e-4)


def assert_rank0_wrote_alone(reports: list[dict[str, Any]], epochs: int) -> None:
    main, other = reports[0]["counts"], reports[1]["counts"]
    assert not any(other.get(k, 0) for k in WRITES), f"rank 1 wrote files: {other}"
    assert main["metrics_row"] == epochs
    assert main.get("save_checkpoint", 0) + main.get("link_checkpoint", 0) >= epochs
    assert main["save_resume_state"] == epochs


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(
    manifest: Path, single: Path, tmp_path: Path
) -> None:
    reports = spawn(2, raw_cfg(tmp_path / "run", manifest), tmp_path / "reports")
    ddp = tmp_path / "run" / "members" / "tiny"
    assert [r["epochs_run"] for r in reports] == [EPOCHS, EPOCHS]
    assert reports[0]["best_epoch"] == reports[1]["best_epoch"]  # every rank took the same decisions
    assert reports[0]["metrics"] == reports[1]["metrics"]
    assert_rank0_wrote_alone(reports, EPOCHS)
    assert reports[0]["counts"]["write_predictions"] == 2  # val and test, once each
    assert len(rows(ddp)) == EPOCHS
    assert not (ddp / "last.state.pt").exists()
    assert_same_training(ddp, single)


@pytest.mark.slow
def test_an_interrupted_ddp_run_resumes_to_the_same_result(
    manifest: Path, single: Path, tmp_path: Path
) -> None:
    first = spawn(2, raw_cfg(tmp_path / "run", manifest), tmp_path / "first", stop_after_epoch=1)
    assert all(r.get("interrupted") for r in first)
    ddp = tmp_path / "run" / "members" / "tiny"
    assert (ddp / "last.state.pt").is_file() and len(rows(ddp)) == 2
    assert_rank0_wrote_alone(first, 2)
    state = torch.load(ddp / "last.state.pt", weights_only=True)
    assert len(state["rng_ranks"]) == 2  # each process's dropout RNG is kept
    second = spawn(2, raw_cfg(tmp_path / "run", manifest, resume=True), tmp_path / "second")
    assert [r["epochs_run"] for r in second] == [EPOCHS, EPOCHS]
    assert_rank0_wrote_alone(second, 1)
    assert_same_training(ddp, single)


@pytest.mark.slow
def test_an_error_on_rank_0_stops_every_process_with_its_message(
    single: Path, manifest: Path, tmp_path: Path
) -> None:
    """Rank 0 alone reads the run directory; when it refuses to resume, every process says why (no hang)."""
    import shutil

    shutil.copytree(single.parent.parent, tmp_path / "run")
    cfg = raw_cfg(tmp_path / "run", manifest, resume=True)
    cfg["models"][0]["backbone"] = "test_resnet"
    reports = spawn(2, cfg, tmp_path / "reports")
    assert [r.get("error", "")[:24] for r in reports] == ["cannot resume tiny: its "] * 2
    assert reports[0]["error"] == reports[1]["error"] and "test_convnext" in reports[0]["error"]
    assert not any(r["counts"] for r in reports)  # nothing was written


def test_a_global_batch_the_processes_cannot_share_is_refused(manifest: Path, tmp_path: Path) -> None:
    cfg = config_from_dict(raw_cfg(tmp_path / "run", manifest, batch_size=7))
    with pytest.raises(
        ConfigError, match=r"train.batch_size=7 is the global batch.*2 training processes"
    ) as info:
        train_member(cfg, "tiny", dist=DistContext(rank=0, world_size=2))
    assert info.value.hint is not None and "train.batch_size=6" in info.value.hint
    assert not (tmp_path / "run").exists()  # refused before anything was written
    member = dict(raw_cfg(tmp_path / "run", manifest)["models"][0], batch_size=9)
    cfg = config_from_dict({**raw_cfg(tmp_path / "run", manifest), "models": [member]})
    with pytest.raises(ConfigError, match=r"models.tiny.batch_size=9"):
        train_member(cfg, "tiny", dist=DistContext(rank=1, world_size=2))


def test_a_torchrun_worker_without_a_process_group_refuses_to_train(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match="no process group is initialised") as info:
        train_member(config_from_dict(raw_cfg(tmp_path / "run", manifest)), "tiny")
    assert info.value.hint is not None and "cxr train base" in info.value.hint
    assert not (tmp_path / "run").exists()


def torchrun_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("WORLD_SIZE", None)
    return env


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cxr"]
    return subprocess.run(
        [*cmd, *args], cwd=cwd, env=torchrun_env(), capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_cxr_train_base_under_torchrun(manifest: Path, single: Path, tmp_path: Path) -> None:
    import yaml

    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(raw_cfg(tmp_path / "run", manifest)))
    bad = torchrun(
        "train", "base", "--config", str(config), "--all", "--set", "train.batch_size=5", cwd=tmp_path
    )
    assert bad.returncode != 0
    assert bad.stderr.count("error: train.batch_size=5 is the global batch") == 2  # each process says why
    assert "/cxr/" not in bad.stderr  # a message, not a traceback (torchrun adds its own launcher's)
    assert not (tmp_path / "run").exists()
    done = torchrun("train", "base", "--config", str(config), "--all", "-q", "--verbose", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory:") == 1  # rank 0 reports, once
    writes = [line for line in done.stderr.splitlines() if "wrote checkpoint" in line]
    assert writes and all(line.startswith("[rank 0]") for line in writes), writes
    assert "[rank 1]" in done.stderr  # both processes ran (and said so with --verbose)
    assert_same_training(tmp_path / "run" / "members" / "tiny", single)


@pytest.mark.slow
def test_two_nodes_meet_through_c10d_rendezvous(manifest: Path, single: Path, tmp_path: Path) -> None:
    """Two torchrun agents of one process each, as on two machines: rank 1 has LOCAL_RANK 0."""
    import socket

    import yaml

    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(raw_cfg(tmp_path / "run", manifest)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node = [
        *(sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1"),
        *("--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=cxr-test"),
        *("-m", "cxr", "train", "base", "--config", str(config), "--all", "-q"),
    ]
    agents = [
        subprocess.Popen(
            node, cwd=tmp_path, env=torchrun_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [a.communicate(timeout=600) for a in agents]
    assert [a.returncode for a in agents] == [0, 0], [err[-2000:] for _, err in outputs]
    assert sum(out.count("run directory:") for out, _ in outputs) == 1
    assert_same_training(tmp_path / "run" / "members" / "tiny", single)
