"""The demo's settings: where the run goes, which data, which training config, what to skip or force."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cxr.errors import ConfigError

PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # cxr/configs: package data of the wheel


def default_config(name: str) -> Path:
    """``configs/<name>.yaml`` from the working directory, else the copy installed with cxr."""
    here = Path("configs") / f"{name}.yaml"
    return here if here.is_file() else PACKAGED_CONFIGS / f"{name}.yaml"


@dataclass(frozen=True)
class DemoConfig:
    run_dir: Path = Path("runs/demo")
    data: Path | None = None  # None: synthetic chest X-rays (the embedded default)
    train_config: Path | None = None  # None: configs/demo.yaml (synthetic) or configs/paper.yaml (--data)
    per_class: int = 80  # synthetic images per class (configs/demo.yaml is sized for it)
    seed: int = 0
    variants: tuple[str, ...] = ("int8",)
    # INT8 for a demo's minutes: NNCF's fast bias correction on 64 calibration images and no accuracy control
    # (the export's defaults, full bias correction on 300 and accuracy control, take ~1 h on 2 cores for the
    # paper members: each accuracy-control step re-ranks every layer group; `make rehearse` keeps them). The
    # fused INT8 graph's verdict still decides whether the demo's INT8 runs.
    int8_calibration_images: int = 64
    int8_fast_bias_correction: bool = True
    int8_accuracy_control: bool = False
    force: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()  # extra `key=value` for the training config
    bench_iterations: int = 10
    max_scan_images: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.per_class < 10:
            raise ConfigError(
                f"per_class {self.per_class} is too small to fill train, val and test",
                hint="use at least 10 synthetic images per class",
            )

    @property
    def training_config(self) -> Path:
        if self.train_config is not None:
            return self.train_config
        return default_config("demo" if self.data is None else "paper")
