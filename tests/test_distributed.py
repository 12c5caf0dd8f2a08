"""Issue 25, second pass: what a multi-GPU or Slurm run would hit, reproduced on the CPU (faked CUDA, gloo).

Each test failed before its fix (stated per test)."""

from __future__ import annotations

import os
import signal

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


class _SignalsItself(torch.utils.data.Dataset):
    """Each item sends ``sig`` to the process that loads it (a DataLoader worker), as Slurm signals every process."""

    def __init__(self, sig: int):
        self.sig = sig

    def __len__(self) -> int:
        return 4

    def __getitem__(self, key):
        os.kill(os.getpid(), self.sig)
        return torch.zeros(1)


def _loaders(ds):
    from heartbeit_lib.classify import data as cdata
    from heartbeit_lib.mim import data as mdata
    from heartbeit_lib.pipeline.pretrain import signal as psignal
    cpu = torch.device("cpu")
    cfg = P.PretrainConfig(num_workers=2)
    yield "mim.data.make_loader", mdata.make_loader(ds, mdata.EpochSampler(4, 2), 2, 2, cpu, drop_last=True)
    yield "pretrain.signal._loader", psignal._loader(ds, mdata.EpochSampler(4, 2), 2, cfg, cpu, drop_last=True)
    yield "classify.data.make_loader", cdata.make_loader(ds, 2, False, 0, 2)


@pytest.mark.parametrize("signame", ["SIGUSR2", "SIGUSR1", "SIGTERM"])
def test_loader_workers_ignore_the_preemption_signal(tmp_path, signame):
    """Only the main process runs the (submitit-like) checkpoint-and-requeue handler: a handler that records its
    process id is installed in the main process, then every loader worker receives the signal.  Before the fix
    the forked workers inherited the handler and recorded their own ids (2 workers x 3 loaders)."""
    sig = getattr(signal, signame)
    log = tmp_path / "handled.txt"

    def handler(signum, frame):  # what submitit's checkpoint_and_try_requeue would do: once, in rank 0's main
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")

    old = signal.signal(sig, handler)
    try:
        for name, loader in _loaders(_SignalsItself(sig)):
            assert sum(len(b) for b in loader) == 4, name
            del loader
        assert not log.exists(), f"workers ran the handler: {log.read_text().split()}"
        os.kill(os.getpid(), sig)  # the main process still handles it
        assert log.read_text().split() == [str(os.getpid())]
    finally:
        signal.signal(sig, old)
