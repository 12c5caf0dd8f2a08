"""Multi-node training through submitit: ``python -m heartbeit_lib.launch <stage> ...``.

Submits one Slurm job of ``nodes x gpus_per_node`` tasks (one process per GPU, as ``torchrun`` starts them)
that runs the stage's own command-line entry (the code ``torchrun -m heartbeit_lib.pretrain`` runs)::

    python -m heartbeit_lib.launch pretrain -f parameters/02_pretrain/paper.yaml \\
        -p cohort_run outputs/01_preprocess/pretrain -p run_id paper \\
        --nodes 2 --gpus-per-node 8 --cpus-per-task 12 --mem-gb 480 --time-min 2880 \\
        --partition gpu --account mylab --setup "source .venv/bin/activate"

Each task takes its distributed environment from Slurm through ``submitit.helpers.TorchDistributedEnvironment``
(``MASTER_ADDR`` = the first node, ``MASTER_PORT`` from the job id, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``),
then calls the stage, which initialises the process group itself (NCCL on GPUs, gloo on CPU). On preemption or
at the time limit Slurm signals the job; submitit calls :meth:`DistributedJob.checkpoint` and requeues it, and the
requeued job resumes from the run folder's last epoch checkpoint (``checkpoints/last.pt``, written every
``save_every`` epochs; the stage runs with ``resume=true``). Work since that checkpoint is lost: an epoch of the
paper's cohort should fit well within the time limit, or lower ``save_every``.

``--executor local`` runs the same job as local processes on this machine (submitit's LocalExecutor; one node).
Stages: ``pretrain`` (:mod:`heartbeit_lib.pipeline.pretrain`) and ``pretrain_signal`` (the signal pretraining
entry, :mod:`heartbeit_lib.pipeline.pretrain_signal`, once that module exists).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import submitit

from heartbeit_lib import safety
from heartbeit_lib.pipeline import runs

# stage -> module whose main(argv) is the torchrun entry point
# (pretrain_signal is the same entry point with ``-p modality signal``: ST-MEM on the image pretraining's rows)
STAGES = {"pretrain": "heartbeit_lib.pipeline.pretrain", "pretrain_signal": "heartbeit_lib.pipeline.pretrain"}
NOTEBOOK_OF = {"pretrain": "02_pretrain", "pretrain_signal": "02_pretrain"}


class LaunchError(runs.ConfigError):
    """A launch request that cannot work (unknown stage, no run_id with several processes, bad resources)."""


def stage_entry(stage: str) -> Callable[[Sequence[str]], int]:
    """The ``main(argv)`` of ``stage`` (imported by name: the signal stage may not exist yet)."""
    if stage not in STAGES:
        raise LaunchError(f"stage {stage!r} is not one of {sorted(STAGES)}")
    try:
        main = importlib.import_module(STAGES[stage]).main
    except ModuleNotFoundError as e:
        raise LaunchError(f"stage {stage!r}: its module {STAGES[stage]} does not exist in this version") from e
    if stage == "pretrain_signal":
        return lambda argv: main([*argv, "-p", "modality", "signal"])
    return main


class DistributedJob(submitit.helpers.Checkpointable):
    """One task of a distributed job: export the torch.distributed environment, then run ``target(*args)``.

    ``target`` defaults to the stage's ``main`` with ``argv``; a requeued job (after :meth:`checkpoint`) runs
    with ``-p resume true`` so it continues from the last checkpoint.
    """

    def __init__(self, stage: str, argv: Sequence[str], target: Callable[..., Any] | None = None,
                 args: Sequence[Any] = (), socket_ifname: str | None = None):
        self.stage, self.argv, self.target, self.args = stage, list(argv), target, tuple(args)
        self.socket_ifname = socket_ifname

    def __call__(self) -> Any:
        # CUDA_VISIBLE_DEVICES stays as Slurm set it: the stage picks utils.cuda_index(LOCAL_RANK), as under torchrun
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        if self.socket_ifname:  # the network interface of both backends (gloo's barriers, NCCL's collectives)
            os.environ["NCCL_SOCKET_IFNAME"] = os.environ["GLOO_SOCKET_IFNAME"] = self.socket_ifname
        if self.target is not None:
            return self.target(*self.args)
        return stage_entry(self.stage)(self.argv)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeue the same job, resuming (the stage checkpoints every epoch; nothing to save here)."""
        again = DistributedJob(self.stage, [*self.argv, "-p", "resume", "true"], self.target, self.args,
                               self.socket_ifname)
        return submitit.helpers.DelayedSubmission(again)


def slurm_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """SlurmExecutor parameters (sbatch options) of a launch: one task per GPU on every node."""
    bad = [kv for kv in args.sbatch if "=" not in kv]
    if bad:
        raise LaunchError(f"--sbatch {bad[0]!r}: expected KEY=VALUE (e.g. --sbatch qos=high)")
    extra = dict(kv.split("=", 1) for kv in args.sbatch)
    out = {"job_name": f"heartbeit-{args.stage}", "nodes": args.nodes, "ntasks_per_node": args.gpus_per_node,
           "gpus_per_node": args.gpus_per_node, "cpus_per_task": args.cpus_per_task, "time": args.time_min,
           "signal_delay_s": 300,  # USR2 five minutes before the limit: time for the epoch's checkpoint to land
           "partition": args.partition, "account": args.account, "constraint": args.constraint,
           "mem": f"{args.mem_gb}GB" if args.mem_gb else None, "setup": args.setup or None,
           "additional_parameters": extra or None}
    return {k: v for k, v in out.items() if v is not None}


# SlurmExecutor parameter -> the launch option that sets it (named in errors)
_OPTION = {"nodes": "--nodes", "ntasks_per_node": "--gpus-per-node", "gpus_per_node": "--gpus-per-node",
           "cpus_per_task": "--cpus-per-task", "time": "--time-min", "partition": "--partition",
           "account": "--account", "constraint": "--constraint", "mem": "--mem-gb", "setup": "--setup",
           "additional_parameters": "--sbatch"}


def make_executor(args: argparse.Namespace) -> submitit.Executor:
    """A SlurmExecutor (``--executor slurm``; needs ``srun``) or a one-node LocalExecutor with the same tasks."""
    folder = Path(args.log_dir)
    try:
        params = safety.check_sbatch(slurm_parameters(args), folder, "launch", _OPTION)
    except runs.ConfigError as e:
        raise LaunchError(str(e).replace("log folder (log_dir)", "log folder (--log-dir)")) from None
    if args.executor == "local":
        if args.nodes != 1:
            raise LaunchError("--executor local runs on one node: use --nodes 1")
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(tasks_per_node=args.gpus_per_node, timeout_min=args.time_min,
                             gpus_per_node=args.gpus_per_node if args.gpu else 0)
        return ex
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=args.max_requeue)
    ex.update_parameters(**params)
    return ex


def check_run_id(argv: Sequence[str], world: int) -> None:
    """Several processes must share one run folder: ``run_id`` must be set (in a ``-f`` file or ``-p``)."""
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-f", "--parameters")]
    params = runs.load_parameter_files(*files)
    params.update({argv[i + 1]: argv[i + 2] for i, a in enumerate(argv[:-2]) if a in ("-p", "--param")})
    if world > 1 and not params.get("run_id"):
        raise LaunchError(f"{world} processes need one run folder: pass -p run_id <id>")


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """(launch options, the stage's own arguments: -f files and -p pairs, passed through unchanged)."""
    ap = argparse.ArgumentParser(prog="python -m heartbeit_lib.launch",
                                 description="Submit a distributed training stage through submitit (Slurm).")
    ap.add_argument("stage", choices=sorted(STAGES))
    ap.add_argument("--executor", choices=("slurm", "local"), default="slurm")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--gpus-per-node", type=int, default=8, help="also the tasks (processes) per node")
    ap.add_argument("--cpus-per-task", type=int, default=10, help="loader workers + 2 is a good start")
    ap.add_argument("--mem-gb", type=int, default=None)
    ap.add_argument("--time-min", type=int, default=24 * 60)
    ap.add_argument("--partition", default=None)
    ap.add_argument("--account", default=None)
    ap.add_argument("--constraint", default=None)
    ap.add_argument("--setup", action="append", default=[], help="shell line run before srun (repeatable)")
    ap.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE", help="extra sbatch option")
    ap.add_argument("--max-requeue", type=int, default=10, help="time-outs/preemptions requeued at most")
    ap.add_argument("--log-dir", default="outputs/launch_logs", help="submitit logs and pickles")
    ap.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=True,
                    help="--no-gpu: local CPU processes (gloo)")
    ap.add_argument("--socket-ifname", default=None, metavar="IFACE",
                    help="network interface(s) between nodes, exact names (e.g. ib0): sets NCCL_SOCKET_IFNAME and "
                         "GLOO_SOCKET_IFNAME in every task (default: NCCL's, copied to gloo)")
    ap.add_argument("--wait", action="store_true", help="wait for the job and print rank 0's result")
    return ap.parse_known_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args, stage_argv = parse(sys.argv[1:] if argv is None else argv)
    check_run_id(stage_argv, args.nodes * args.gpus_per_node)
    stage_entry(args.stage)  # fail here, not on the cluster, if the stage does not exist
    ex = make_executor(args)
    job = ex.submit(DistributedJob(args.stage, stage_argv, socket_ifname=args.socket_ifname))
    print(f"submitted {args.stage} as job {job.job_id} ({args.nodes} node(s) x {args.gpus_per_node} task(s)); "
          f"logs: {job.paths.stdout}", flush=True)
    if args.wait:
        print(job.results()[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
