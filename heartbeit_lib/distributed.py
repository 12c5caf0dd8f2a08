"""Distributed-run helpers, in one place: who this process is, the process group, barriers, sums over ranks.

Under ``torchrun`` (or the Slurm launcher, :mod:`heartbeit_lib.launch`) the environment names the rank; without
it every helper is a no-op for one process. Imports only :mod:`heartbeit_lib.utils` (the lowest of the layers).
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import warnings

import torch
import torch.distributed as dist

from heartbeit_lib.utils import cuda_index


def dist_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the torchrun / Slurm environment; (0, 0, 1) when not distributed."""
    env = os.environ
    if "WORLD_SIZE" in env:
        return int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"])
    return 0, 0, 1


def cap_compile_threads(env: dict | None = None, cpus: int | None = None) -> int:
    """Limit inductor's compile workers of this process to its share of the CPUs; returns the number set.

    ``torch.compile`` starts ``compile_threads`` worker processes (inductor's default: min(32, CPUs)) in every
    rank, so 8 ranks on a node start up to 256 at once.  Here: ``max(1, min(32, cpus // LOCAL_WORLD_SIZE))``,
    ``cpus`` = this process's CPU affinity (a Slurm task's own CPUs; under torchrun every rank sees the node's,
    shared by ``LOCAL_WORLD_SIZE`` ranks).  A ``TORCHINDUCTOR_COMPILE_THREADS`` in the environment wins.
    """
    import torch._inductor.config as inductor_config  # imported here: only compiled runs need it

    env = os.environ if env is None else env
    if env.get("TORCHINDUCTOR_COMPILE_THREADS"):
        n = int(env["TORCHINDUCTOR_COMPILE_THREADS"])
    else:
        cpus = cpus or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        n = max(1, min(32, cpus // max(1, int(env.get("LOCAL_WORLD_SIZE", 1)))))
    inductor_config.compile_threads = n
    return n


def gloo_socket_ifname(env: dict | None = None) -> str | None:
    """Set ``GLOO_SOCKET_IFNAME`` from ``NCCL_SOCKET_IFNAME`` when only the latter is set; returns the value used.

    Every run opens gloo groups besides NCCL (``long_barrier``, gloo on CPU); across nodes gloo needs the
    network interface too, else it binds to the hostname's address, often one the other node cannot reach.  NCCL
    names interfaces by prefix (``eth`` = eth0, eth1, ...; ``=eth0`` exactly); gloo wants exact names, so each
    prefix becomes the first local interface it matches.  NCCL's exclusion form (``^docker,lo``) has no gloo
    equivalent: then nothing is set (a warning says so; set ``GLOO_SOCKET_IFNAME`` or ``launch --socket-ifname``).
    """
    env = os.environ if env is None else env
    if env.get("GLOO_SOCKET_IFNAME") or not env.get("NCCL_SOCKET_IFNAME"):
        return env.get("GLOO_SOCKET_IFNAME")
    spec = env["NCCL_SOCKET_IFNAME"]
    if spec.startswith("^"):
        warnings.warn(f"NCCL_SOCKET_IFNAME={spec!r} excludes interfaces, which gloo cannot; set GLOO_SOCKET_IFNAME "
                      "for multi-node runs", stacklevel=2)
        return None
    local = [name for _, name in socket.if_nameindex()]
    names = []
    for item in filter(None, spec.split(",")):
        if item.startswith("="):
            names.append(item[1:])
        else:
            names.append(next((n for n in local if n.startswith(item)), item))
    env["GLOO_SOCKET_IFNAME"] = ",".join(names)
    return env["GLOO_SOCKET_IFNAME"]


def init_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); initialises the process group under torchrun when needed.

    On CUDA the process's device (``utils.cuda_index``: the rule :func:`utils.resolve_device` follows too) is set
    before the first collective, so NCCL never puts every rank's buffers on GPU 0.
    """
    rank, local_rank, world = dist_info()
    if world > 1 and dist.is_available() and not dist.is_initialized():
        gloo_socket_ifname()  # before any gloo group exists
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(cuda_index(local_rank))
        # HEARTBEIT_DIST_BACKEND=gloo: several processes on one GPU (NCCL refuses two ranks on one device), as
        # benchmarks/gpu_check.sh runs the DDP path on a single chip
        backend = os.environ.get("HEARTBEIT_DIST_BACKEND") or ("nccl" if cuda else "gloo")
        if backend == "nccl":
            dist.init_process_group("nccl", device_id=torch.device("cuda", torch.cuda.current_device()))
        else:
            dist.init_process_group(backend)
    return rank, world, local_rank


# what a job scheduler sends before it stops a job: Slurm's --signal (submitit: USR2, or SUBMITIT_PREEMPT_SIGNAL),
# USR1 (a common --signal choice), TERM (preemption, scancel)
PREEMPTION_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM")


def ignore_preemption_signals(worker_id: int | None = None) -> None:
    """``worker_init_fn`` of every DataLoader: the worker ignores the scheduler's stop signals.

    Slurm signals every process of a job step, and a forked worker inherits the main process's Python handlers:
    under submitit each of rank 0's loader workers would run its checkpoint-and-requeue handler (up to 17
    processes per rank saving the same checkpoint and calling ``scontrol requeue``).  Only the main process of
    rank 0 may do that (submitit already skips ranks > 0); the workers keep serving it until it exits, then
    stop with it (torch's worker loop watches its parent).
    """
    names = {*PREEMPTION_SIGNALS, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")}
    for name in sorted(names):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)


LONG_TIMEOUT = datetime.timedelta(hours=6)  # single-rank or uneven work between two barriers (token precompute)
_LONG_GROUP: list = []


def long_barrier() -> None:
    """Barrier on a gloo group with a 6-hour timeout (no-op in one process).

    For waits on long work (the token precompute, the k-means fit): an NCCL barrier would be killed by its
    watchdog after the default 10 minutes.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    if not _LONG_GROUP:
        _LONG_GROUP.append(dist.new_group(backend="gloo", timeout=LONG_TIMEOUT))
    dist.barrier(group=_LONG_GROUP[0])


def barrier() -> None:
    """``dist.barrier()`` on the default group (no-op in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce(t: torch.Tensor, world: int) -> torch.Tensor:
    """Sum ``t`` over ranks in place (no-op for one process)."""
    if world > 1:
        dist.all_reduce(t)
    return t


def mean_over_ranks(total: float, count: int, world: int, device: torch.device) -> float:
    """``sum(total) / sum(count)`` over ranks (``total / count`` for one process; 0 counts read as 1)."""
    if world == 1:
        return total / max(count, 1)
    t = torch.tensor([total, count], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t[0] / t[1].clamp(min=1))
