"""`cxr train probe`: the frozen-feature linear probe, the floor the ensemble must beat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from safetensors.torch import save_file  # noqa: E402

from cxr.data.manifest import SplitConfig, build_manifest, load_manifest  # noqa: E402
from cxr.data.synthetic import SynthConfig, synthesize  # noqa: E402
from cxr.errors import ConfigError  # noqa: E402
from cxr.train.predictions import read_predictions  # noqa: E402
from cxr.train.probe import ProbeConfig, linear_probe  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("probe")
    data = synthesize(SynthConfig(root / "data", per_class=10, seed=0, size=48))
    build_manifest(
        SplitConfig(data.root, root / "run" / "manifest.csv", seed=0, near_duplicate_threshold=None)
    )
    weights = root / "test_resnet.safetensors"
    state = timm.create_model("test_resnet", num_classes=1000).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    return root / "run", weights


def test_probe_writes_val_and_test_tables_and_its_provenance(run: tuple[Path, Path]) -> None:
    run_dir, weights = run
    res = linear_probe(
        ProbeConfig(run_dir, backbone="test_resnet", pretrained=weights, input_size=32, c_grid=(0.1, 1.0))
    )
    manifest_rows = {r.path: r for r in load_manifest(run_dir / "manifest.csv").rows}
    for split in ("val", "test"):
        table = read_predictions(res.out_dir / f"{split}.csv")
        assert sorted(table.paths) == sorted(p for p, r in manifest_rows.items() if r.split == split)
        assert table.precision == "fp32" and table.probs.shape[1] == 4
    info = json.loads((res.out_dir / "probe.json").read_text())
    assert (
        info["c"] in (0.1, 1.0)
        and info["weights"]["source"] == "file"
        and len(info["weights"]["sha256"]) == 64
    )
    assert info["n_train"] == res.n_train == 32 and 0.0 <= res.test_metrics["accuracy"] <= 1.0


def test_a_probe_on_random_features_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="random features measures nothing"):
        ProbeConfig(tmp_path, pretrained=False)
