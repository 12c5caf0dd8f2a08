"""Gradient accumulation (issue 25 item 6): ``accum_steps`` micro-batches per optimizer step follow the large
batch's trajectory, in one process and under DDP (gloo, ``no_sync`` on all but the last micro-batch).

Oracle: the same run with the whole batch per forward (``accum_steps`` 1): per-step losses to rtol 1e-5 and the
final weights to atol 3e-5 (float summation order differs; test_ddp uses the same tolerances)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from conftest import free_port, gloo_rank, tiny_mim_data, tiny_pretrain_config
from heartbeit_lib.pipeline import pretrain as P


def _steps(history) -> np.ndarray:
    return np.concatenate([h["step_losses"] for h in history])


def _close(a_dir, b_dir) -> None:
    a = torch.load(a_dir / "checkpoints/last.pt", weights_only=True)
    b = torch.load(b_dir / "checkpoints/last.pt", weights_only=True)
    for k, v in a["backbone"].items():
        torch.testing.assert_close(b["backbone"][k], v, rtol=0, atol=3e-5, msg=k)


def _worker(rank: int, world: int, port: int, out_dir: str, accum: int) -> None:
    with gloo_rank(rank, world, port):
        cfg = dataclasses.replace(tiny_pretrain_config(), accum_steps=accum)
        res = P.train(cfg, tiny_mim_data(), os.path.join(out_dir, "ddp"), record_steps=True)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(res["history"], f)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_accumulated_micro_batches_follow_the_large_batch(tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_pretrain_config()  # global batch 8, 4 steps per epoch, 2 epochs
    large = P.train(cfg, tiny_mim_data(), tmp_path / "large", record_steps=True)
    accum = P.train(dataclasses.replace(cfg, accum_steps=4), tiny_mim_data(), tmp_path / "accum", record_steps=True)
    assert len(_steps(accum["history"])) == len(_steps(large["history"])) == 8  # optimizer steps, not micro-batches
    np.testing.assert_allclose(_steps(accum["history"]), _steps(large["history"]), rtol=1e-5)
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        np.testing.assert_allclose([h[key] for h in accum["history"]], [h[key] for h in large["history"]],
                                   rtol=1e-5, err_msg=key)
    _close(tmp_path / "large", tmp_path / "accum")
    # two gloo processes x 2 micro-batches of 2: DDP reduces the accumulated gradients once per step
    mp.start_processes(_worker, args=(2, free_port(), str(tmp_path), 2), nprocs=2, join=True, start_method="fork")
    for r in range(2):
        hist = json.loads((tmp_path / f"rank{r}.json").read_text())
        np.testing.assert_allclose(_steps(hist), _steps(large["history"]), rtol=1e-5)
    _close(tmp_path / "large", tmp_path / "ddp")
    with pytest.raises(P.PretrainError, match="accum_steps 3"):
        P.train(dataclasses.replace(cfg, accum_steps=3), tiny_mim_data(), tmp_path / "bad")
