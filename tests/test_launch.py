"""``heartbeit_lib.launch``: two-process pretraining through the launcher's code path (submitit local executor,
``TorchDistributedEnvironment``, gloo on CPU) follows the torchrun path.

Oracle: the torchrun path of ``tests/test_ddp.py`` (processes started with ``RANK``/``WORLD_SIZE``/... in the
environment, then :func:`pretrain.train`), run here on the same config and data. Tolerance: per-step and
per-epoch losses rtol 1e-5 (the two paths run the same code on the same data; they may differ only in gloo's
float32 reduction order, as the torchrun path differs from one process by up to 1.8e-7). The sbatch script's
text is checked without a cluster (submitit writes it; ``srun`` is faked as present).
"""

from __future__ import annotations

import json
import os
import sys

import cloudpickle
import numpy as np
import pytest
import submitit
import torch
import torch.multiprocessing as mp

from heartbeit_lib import launch
from conftest import free_port, tiny_mim_data, tiny_pretrain_config

from heartbeit_lib.pipeline import pretrain as P

# the job pickles this module's functions by value: the job's process need not import tests/
cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(sys.modules["conftest"])  # the shared builders travel the same way


def _train(out_dir: str, tag: str) -> dict:
    """What one rank does in both paths: train, write its history, leave the process group."""
    import torch.distributed as dist  # noqa: PLC0415 - only inside the worker processes

    torch.set_num_threads(1)
    try:
        res = P.train(tiny_pretrain_config(), tiny_mim_data(), os.path.join(out_dir, tag), record_steps=True)
        rank = int(os.environ["RANK"])
        with open(os.path.join(out_dir, f"{tag}-rank{rank}.json"), "w") as f:
            json.dump({"history": res["history"], "world": res["world_size"]}, f)
        return {"world": res["world_size"]}
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _torchrun_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    _train(out_dir, "torchrun")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_launcher_two_processes_match_the_torchrun_path(tmp_path):
    mp.start_processes(_torchrun_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    args, rest = launch.parse(["pretrain", "--executor", "local", "--nodes", "1", "--gpus-per-node", "2",
                               "--no-gpu", "--time-min", "5", "--log-dir", str(tmp_path / "logs")])
    assert rest == []
    ex = launch.make_executor(args)
    env = {"MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the local job's processes inherit it (on Slurm the port comes from the job id)
    try:
        job = ex.submit(launch.DistributedJob("pretrain", [], target=_train, args=(str(tmp_path), "launch")))
        results = job.results()  # one per task; raises with the task's traceback if one failed
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert results == [{"world": 2}, {"world": 2}]
    for rank in range(2):
        a = json.loads((tmp_path / f"torchrun-rank{rank}.json").read_text())
        b = json.loads((tmp_path / f"launch-rank{rank}.json").read_text())
        assert a["world"] == b["world"] == 2
        sa = np.concatenate([h["step_losses"] for h in a["history"]])
        sb = np.concatenate([h["step_losses"] for h in b["history"]])
        assert len(sa) == len(sb) == 8
        np.testing.assert_allclose(sb, sa, rtol=1e-5)
        for key in ("train_loss", "val_loss", "val_acc", "lr"):
            np.testing.assert_allclose([h[key] for h in b["history"]], [h[key] for h in a["history"]], rtol=1e-5)


def test_requeue_resumes_and_the_sbatch_script_carries_the_resources(tmp_path, monkeypatch):
    job = launch.DistributedJob("pretrain", ["-f", "parameters/02_pretrain/paper.yaml", "-p", "run_id", "paper"])
    again = job.checkpoint().function
    assert again.argv[-3:] == ["-p", "resume", "true"] and again.stage == "pretrain"
    with pytest.raises(launch.LaunchError, match="run_id"):
        launch.check_run_id(["-f", "parameters/02_pretrain/paper.yaml"], world=16)
    assert callable(launch.stage_entry("pretrain_signal"))  # 02 with modality signal (ST-MEM)
    with pytest.raises(launch.LaunchError, match="not one of"):
        launch.stage_entry("pretrain_images")  # unknown stage: a clear error before anything is submitted
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # pretend srun exists
    args, rest = launch.parse(["pretrain", "-f", "parameters/02_pretrain/paper.yaml", "-p", "run_id", "paper",
                               "--nodes", "2", "--gpus-per-node", "8", "--cpus-per-task", "12", "--mem-gb", "480",
                               "--partition", "gpu", "--account", "lab", "--constraint", "h100",
                               "--sbatch", "qos=high", "--setup", "source .venv/bin/activate",
                               "--log-dir", str(tmp_path)])
    assert rest == ["-f", "parameters/02_pretrain/paper.yaml", "-p", "run_id", "paper"]
    ex = launch.make_executor(args)
    text = ex._make_submission_file_text(ex._submitit_command_str, "uid")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=12", "#SBATCH --mem=480GB", "#SBATCH --partition=gpu",
                 "#SBATCH --account=lab", "#SBATCH --constraint=h100", "#SBATCH --qos=high",
                 "#SBATCH --signal=USR2@300", "source .venv/bin/activate"):
        assert line in text, line
