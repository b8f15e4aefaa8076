"""One training process of a DDP test: joins a gloo group, trains a member, reports what it wrote.

``run_rank`` is the target of ``torch.multiprocessing.start_processes`` in ``test_train_ddp.py``. It counts
every file write the training stage makes in this process (checkpoints, resume state, metrics rows,
prediction files) by wrapping the functions ``cxr.train.run`` calls, optionally interrupts the run after an
epoch (as Ctrl-C would), and writes ``rank<N>.json`` with the counts and the outcome.
"""

from __future__ import annotations

import datetime
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _counting(counts: Counter[str], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        counts[name] += 1
        return fn(*args, **kwargs)

    return wrapper


def run_rank(
    rank: int,
    world: int,
    init_file: str,
    cfg_dict: dict[str, Any],
    member: str,
    out_dir: str,
    stop_after_epoch: int | None,
) -> None:
    import torch
    import torch.distributed as dist

    from cxr.errors import CxrError
    from cxr.train import run as run_module
    from cxr.train.config import config_from_dict
    from cxr.train.tracking import MetricsLog

    torch.set_num_threads(1)
    # a short timeout: a regression that desynchronises the processes fails the test instead of hanging CI
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    counts: Counter[str] = Counter()
    for name in ("save_checkpoint", "link_checkpoint", "save_resume_state", "write_predictions"):
        setattr(run_module, name, _counting(counts, name, getattr(run_module, name)))
    MetricsLog.append = _counting(counts, "metrics_row", MetricsLog.append)  # type: ignore[method-assign]
    if stop_after_epoch is not None:
        save_epoch = run_module._save_epoch

        def save_then_interrupt(run: Any, current: Any, epoch: int, *args: Any) -> None:
            save_epoch(run, current, epoch, *args)
            if epoch == stop_after_epoch:
                raise KeyboardInterrupt

        run_module._save_epoch = save_then_interrupt  # type: ignore[assignment]
    outcome: dict[str, Any]
    try:
        result = run_module.train_member(config_from_dict(cfg_dict), member)
        outcome = {
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "metrics": result.metrics,
        }
    except KeyboardInterrupt:
        outcome = {"interrupted": True}
    except CxrError as e:
        outcome = {"error": e.message}
    finally:
        dist.destroy_process_group()
    report = {"rank": rank, "counts": dict(counts), **outcome}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report, default=str), encoding="utf-8")
