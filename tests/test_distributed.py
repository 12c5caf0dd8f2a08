"""Issue 25, second pass: what a multi-GPU or Slurm run would hit, reproduced on the CPU (faked CUDA, gloo).

Each test failed before its fix (stated per test)."""

from __future__ import annotations

import os
import signal
import socket

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


def test_gloo_takes_the_interface_nccl_is_told(monkeypatch):
    """Two nodes: gloo (long_barrier, CPU groups) needs GLOO_SOCKET_IFNAME; before the fix only NCCL's was set.
    Oracle: socket.if_nameindex() (the loopback 'lo' exists here)."""
    local = [n for _, n in socket.if_nameindex()]
    lo = next(n for n in local if n.startswith("lo"))
    env = {"NCCL_SOCKET_IFNAME": "lo"}  # NCCL's prefix form
    assert distributed.gloo_socket_ifname(env) == lo and env["GLOO_SOCKET_IFNAME"] == lo
    env = {"NCCL_SOCKET_IFNAME": "=ib0,=lo"}  # exact names
    assert distributed.gloo_socket_ifname(env) == "ib0,lo"
    env = {"NCCL_SOCKET_IFNAME": "lo", "GLOO_SOCKET_IFNAME": "eth7"}  # an explicit gloo setting wins
    assert distributed.gloo_socket_ifname(env) == "eth7"
    with pytest.warns(UserWarning, match="GLOO_SOCKET_IFNAME"):
        assert distributed.gloo_socket_ifname({"NCCL_SOCKET_IFNAME": "^docker"}) is None
    # init_distributed sets it before the process group (and so before any gloo group) exists
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "lo")
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    seen = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: seen.append(os.environ.get("GLOO_SOCKET_IFNAME")))
    distributed.init_distributed()
    assert seen == [lo]


def test_launcher_option_sets_both_interfaces(monkeypatch):
    from heartbeit_lib import launch
    args, rest = launch.parse(["pretrain", "--socket-ifname", "ib0", "-p", "run_id", "x"])
    assert args.socket_ifname == "ib0" and rest == ["-p", "run_id", "x"]
    monkeypatch.setattr(launch.submitit.helpers.TorchDistributedEnvironment, "__init__", lambda self: None)
    monkeypatch.setattr(launch.submitit.helpers.TorchDistributedEnvironment, "export", lambda self, **k: None)
    for k in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
        monkeypatch.delenv(k, raising=False)
    job = launch.DistributedJob("pretrain", rest, target=lambda: (os.environ["NCCL_SOCKET_IFNAME"],
                                                                  os.environ["GLOO_SOCKET_IFNAME"]),
                                socket_ifname="ib0")
    assert job() == ("ib0", "ib0")
    assert job.checkpoint().function.socket_ifname == "ib0"  # a requeued job keeps it


def _token_worker(rank: int, world: int, port: int, store_dir: str, tok_path: str, cache: str, log: str) -> None:
    """A rank of the token precompute that records every file it opens for writing."""
    import numpy as np

    from conftest import gloo_rank
    from heartbeit_lib import cohorts
    from heartbeit_lib.mim import tokenizers
    real = np.lib.format.open_memmap

    def recording(path, mode="r+", *a, **k):
        if mode in ("r+", "w+"):
            with open(log, "a") as f:
                f.write(f"{rank} {os.path.basename(path)}\n")
        return real(path, mode, *a, **k)

    np.lib.format.open_memmap = recording
    with gloo_rank(rank, world, port):
        r, w, _ = distributed.init_distributed()
        tok = tokenizers.load_tokenizer("ecg_kmeans", tok_path)
        tokenizers.precompute_tokens(cohorts.CohortStore(store_dir), tok, 32, cache_dir=cache, batch_size=8,
                                     rank=r, world=w, barrier=distributed.long_barrier)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_token_precompute_ranks_never_write_the_same_file(tmp_path):
    """On a shared file system two nodes writing one memmap each flush whole pages, so the page holding the
    boundary between their rows keeps one node's half: each rank must write its own file.  Before the fix both
    ranks opened ``<key>.partial-2.npy`` read-write.  Oracle for the content: the one-process cache, byte for
    byte (the files ``open_memmap`` opens for writing are recorded per rank)."""
    import numpy as np
    import pandas as pd
    import torch.multiprocessing as mp

    from conftest import free_port
    from heartbeit_lib import cohorts, render
    from heartbeit_lib.mim import tokenizers
    rng = np.random.default_rng(0)
    x = (800 * np.sin(2 * np.pi * rng.uniform(0.8, 2, (37, 8, 1)) * np.arange(2500) / 500)).astype(np.float32)
    meta = pd.DataFrame({"record_id": [f"r{i}" for i in range(37)], "patient_id": [f"p{i}" for i in range(37)],
                         "site": "a", "label": -1})
    store = cohorts.build_store_from_arrays(tmp_path / "store", x, meta, task="unlabelled")
    tok = tokenizers.fit_kmeans_tokenizer(render.render_ecg(store.signals(np.arange(20)), size=32), 16, seed=0)
    tok_path = tok.save(tmp_path / "tok.pt")
    one = tokenizers.precompute_tokens(store, tok, 32, cache_dir=tmp_path / "one", batch_size=8)
    log = tmp_path / "writes.txt"
    mp.start_processes(_token_worker, args=(2, free_port(), str(store.root), str(tok_path), str(tmp_path / "two"),
                                            str(log)), nprocs=2, join=True, start_method="fork")
    writes = [line.split() for line in log.read_text().splitlines()]
    by_rank = {r: {name for rr, name in writes if int(rr) == r} for r in (0, 1)}
    merged = {name for name in by_rank[0] if name.endswith(".partial-2.npy")}  # rank 0's merge after the barrier
    assert not (by_rank[0] - merged) & by_rank[1], writes
    assert by_rank[1] and not by_rank[1] & merged, writes
    name = os.path.basename(one.filename)
    assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one"))  # no part file left


@pytest.mark.parametrize("env,cpus,want", [
    ({"LOCAL_WORLD_SIZE": "8"}, 128, 16),                 # torchrun: the node's CPUs shared by 8 ranks
    ({}, 12, 12),                                         # a Slurm task with its own 12 CPUs
    ({"LOCAL_WORLD_SIZE": "8"}, 4, 1),                    # never 0
    ({}, 256, 32),                                        # inductor's own ceiling
    ({"LOCAL_WORLD_SIZE": "8", "TORCHINDUCTOR_COMPILE_THREADS": "3"}, 128, 3),  # the user's setting wins
])
def test_compile_threads_are_capped_per_rank(env, cpus, want):
    """Issue 25 item 10c: inductor's default would start min(32, CPUs) compile workers in every rank.  Oracle: the
    value inductor reads (``torch._inductor.config.compile_threads``) after the call."""
    import torch._inductor.config as inductor_config
    before = inductor_config.compile_threads
    try:
        assert distributed.cap_compile_threads(env, cpus) == want
        assert inductor_config.compile_threads == want
    finally:  # not monkeypatch: its undo deletes a config module's attribute
        inductor_config.compile_threads = before
