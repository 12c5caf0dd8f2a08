"""02_pretrain: masked pretraining of the HeartBEiT backbone, one package, two stories.

- :mod:`.config` - :class:`PretrainConfig`, the one declaration of the notebook's parameters (both modalities).
- :mod:`.common` - what both stories share: :func:`split_rows` (the pretraining rows, the evaluation-patient rule
  applied; the same rows fit the tokenizer) and the process set-up (CPU threads, device).
- :mod:`.image` - ``modality: image``: BEiT masked image modelling on rendered ECGs (tokenizer, token cache,
  the training driver, curves, metrics).
- :mod:`.signal` - ``modality: signal``: ST-MEM masked-patch pretraining on the signals of the same rows.

:func:`run` picks the story by ``cfg.modality``; :func:`main` is ``torchrun -m heartbeit_lib.pretrain``. The image
story's names are importable from here (``pretrain.train``, ``pretrain.split_rows``, ...) as before the split.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch.distributed as dist

from heartbeit_lib.distributed import barrier, init_distributed, long_barrier  # noqa: F401
from heartbeit_lib.mim.data import PretrainError
from heartbeit_lib.pipeline import runs
from heartbeit_lib.pipeline.pretrain import image, signal
from heartbeit_lib.pipeline.pretrain.common import EXCLUSION_KEYS, cpu_threads, resolve_device, split_rows  # noqa: F401
from heartbeit_lib.pipeline.pretrain.config import PretrainConfig
from heartbeit_lib.pipeline.pretrain.image import *  # noqa: F401,F403 (the image story's public names)
from heartbeit_lib.pipeline.pretrain.image import _build  # noqa: F401 (tests build the optimiser as train does)

_barrier = barrier  # the name before the split


def run(cfg: PretrainConfig, run_dir: str | os.PathLike, device: str = "cpu") -> dict:
    """The whole pipeline (what the notebook does, finishing the run folder on rank 0), for
    ``torchrun -m heartbeit_lib.pretrain``: the image story, or ST-MEM with ``modality: signal``."""
    if cfg.modality == "signal":
        return signal.run(cfg, run_dir)
    return image.run(cfg, run_dir, device=device)


def main(argv: Sequence[str] | None = None) -> int:
    """``torchrun --nproc_per_node=N -m heartbeit_lib.pretrain -f parameters/02_pretrain/paper.yaml
    -p cohort_run outputs/01_preprocess/<id> -p run_id <id>`` (a run_id is required with several
    processes so that every rank writes the same folder)."""
    cfg = runs.config_from_cli(PretrainConfig, argv, "HeartBEiT MIM pretraining (multi-GPU/multi-node via torchrun)")
    rank, world, local_rank = init_distributed()
    if world > 1 and not cfg.run_id:
        raise PretrainError("with several processes pass -p run_id <id> so all ranks use one run folder")
    if rank == 0:
        run_dir = runs.start_run("02_pretrain", cfg)
    barrier()
    run_dir = Path(cfg.out_root) / "02_pretrain" / (cfg.run_id or run_dir.name)  # type: ignore[possibly-undefined]
    dev = str(resolve_device(cfg.device, local_rank))
    metrics = run(cfg, run_dir, device=dev)
    if rank == 0:
        print(json.dumps(metrics, indent=1, default=str))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0
