"""DistributedDataParallel: 2 CPU processes (gloo) follow the 1-process loss trajectory.

Both runs use the same global batch (8 = 2 x 4) and the same data order and masks (both are
functions of (seed, epoch, row) only).  Oracle: the single-process run of :func:`pretrain.train`.
Tolerance: per-step losses rtol 1e-5 and final weights atol 3e-5 (measured: 1.8e-7 and 3.6e-6; Adam's
normalised updates amplify tiny gradient differences) - the runs differ only in float32 summation order (each rank's gradient is averaged over 4 images, then DDP averages the two ranks;
every image has exactly ``num_masked`` masked patches, so the mean of rank means equals the global
mean).  Drop-path is off: it draws per-rank random numbers.

The processes are started the way ``torchrun`` starts them (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/
``MASTER_ADDR``/``MASTER_PORT`` in the environment), so :func:`pretrain.init_distributed` initialises the
process group itself.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from conftest import free_port, gloo_rank, tiny_mim_data, tiny_pretrain_config

from heartbeit_lib.pipeline import pretrain as P


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    with gloo_rank(rank, world, port):
        res = P.train(tiny_pretrain_config(), tiny_mim_data(), os.path.join(out_dir, "ddp"), record_steps=True)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"history": res["history"], "world": res["world_size"]}, f)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_process_gloo_matches_single_process(tmp_path):
    torch.set_num_threads(1)
    single = P.train(tiny_pretrain_config(), tiny_mim_data(), tmp_path / "single", record_steps=True)
    # fork: the children inherit the imported modules (spawning would re-import torch and timm twice)
    mp.start_processes(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world"] == 2 for r in ranks)
    s_steps = np.concatenate([h["step_losses"] for h in single["history"]])
    for r in ranks:  # every rank logs the rank-averaged loss
        d_steps = np.concatenate([h["step_losses"] for h in r["history"]])
        assert len(d_steps) == len(s_steps) == 8
        np.testing.assert_allclose(d_steps, s_steps, rtol=1e-5)
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            np.testing.assert_allclose([h[key] for h in r["history"]], [h[key] for h in single["history"]],
                                       rtol=1e-5, err_msg=key)
    a = torch.load(tmp_path / "single/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "ddp/checkpoints/last.pt", weights_only=True)
    assert len(b["rng"]) == 2  # each rank's RNG state is saved for an exact resume
    for k, v in a["backbone"].items():
        torch.testing.assert_close(b["backbone"][k], v, rtol=0, atol=3e-5, msg=k)
