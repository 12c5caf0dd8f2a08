"""Issue 25, second pass: what a multi-GPU or Slurm run would hit, reproduced on the CPU (faked CUDA, gloo).

Each test failed before its fix (stated per test)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from heartbeit_lib import distributed, utils
from heartbeit_lib.pipeline import pretrain as P


def _fake_cuda(monkeypatch, count: int) -> list:
    """torch.cuda with ``count`` visible devices; returns the list of set_device targets (as indices)."""
    chosen: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: chosen[-1])

    def set_device(d):
        i = torch.device(d).index if not isinstance(d, int) else d
        if not 0 <= i < count:  # what CUDA says: "invalid device ordinal"
            raise RuntimeError(f"CUDA error: invalid device ordinal {i} (of {count})")
        chosen.append(i)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    return chosen


@pytest.mark.parametrize("count", [1, 2, 8])
def test_one_device_rule_for_the_process_group_and_the_training_device(monkeypatch, count):
    """Slurm with one visible GPU per task (count 1), two ranks on two GPUs, torchrun on 8: for every local rank
    the process group's device and the training device (pretrain's resolve_device) are the same visible GPU.
    Before the fix resolve_device gave cuda:<local_rank>: 'invalid device ordinal' for ranks >= 1 with count 1."""
    chosen = _fake_cuda(monkeypatch, count)
    groups: list = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, device_id=None: groups.append(device_id))
    for local_rank in range(8):
        monkeypatch.setenv("WORLD_SIZE", "8")
        monkeypatch.setenv("RANK", str(local_rank))
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        distributed.init_distributed()
        dev = P.resolve_device("cuda", local_rank)
        assert dev == groups[-1] == torch.device("cuda", local_rank % count)
        assert P.resolve_device(None, local_rank) == dev
        assert chosen[-1] == dev.index


def test_an_explicit_index_that_is_not_visible_is_a_typed_error(monkeypatch):
    _fake_cuda(monkeypatch, 1)
    with pytest.raises(P.PretrainError, match="cuda:3.*1 CUDA device"):
        P.resolve_device("cuda:3")
    assert utils.resolve_device("cuda:0") == torch.device("cuda", 0)
