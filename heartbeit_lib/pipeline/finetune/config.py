"""Notebook 03's parameters: :class:`FinetuneConfig`, the one declaration of the notebook's parameters cell, its
checks, the run folder name and the errors for missing upstream runs."""

from __future__ import annotations

import dataclasses
import typing

from heartbeit_lib.models import registry as models
from heartbeit_lib.pipeline import runs

PAPER_FRACTIONS = (0.01, 0.1, 0.25, 0.5, 1.0)
DEFAULT_IMAGE_SIZE = 224  # the paper's image side (px)
TRANSFORMER_FAMILIES = ("vit", "beit")  # image transformers: no BatchNorm to absorb the input offset


class CohortNotFoundError(runs.ConfigError):
    """``cohort_run`` does not point at a cohort store (run notebooks/01_preprocess.ipynb first)."""


class PretrainRunNotFoundError(runs.ConfigError):
    """``pretrain_run`` does not point at a 02_pretrain run folder with checkpoints."""


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(runs.TypedConfig):
    """Parameters of ``notebooks/03_finetune.ipynb`` (names equal the notebook's parameter names)."""

    task: str = "hcm"  # task name; must equal the cohort store's task
    model: str = "heartbeit"  # registered model: heartbeit, vit_b16, beit_b16, efficientnet_b4, resnet152, <name>_scratch; signal: xresnet1d101, inception1d, stmem, stmem_scratch
    fraction: float = 1.0  # fraction of the training split (nested, stratified subsets saved in the store)
    seed: int = 0  # model init and shuffling seed
    pretrain_run: str | None = None  # 02_pretrain run folder for heartbeit (image) or stmem (signal); None: latest complete run of that modality under out_root
    cohort_run: str | None = None  # 01_preprocess run folder; None: <out_root>/01_preprocess/<task>
    weights: str | None = None  # weights file for ImageNet models (None: offline hub cache) or a heartbeit checkpoint file
    model_size: str | None = None  # architecture size; None: the paper's base (heartbeit: the checkpoint's); micro, tiny, small for CPU runs
    epochs: int = 30  # training epochs (paper: 30)
    batch_size: int = 32  # images per optimiser step
    lr: float = 0.001  # OneCycle peak learning rate (paper: 1e-3)
    lr_start: float = 0.0003  # OneCycle initial learning rate (paper: 3e-4)
    weight_decay: float = 0.0  # Adam weight decay
    layer_decay: float = 1.0  # layer-wise lr decay of the transformers (beit, vit): block i peaks at lr x decay^(L+1-i); 1: off (the paper)
    image_size: int | None = None  # rendered image side in px; None: the pretraining size for heartbeit, else the paper's 224
    layout: str = "stack8"  # ECG image layout (heartbeit_lib.render)
    signal_rate: int = 100  # input rate of the signal models in Hz (store 500 Hz resampled; PTB-XL benchmark: 100); image models ignore it
    crop_seconds: float | None = None  # signal models: random crops of this many s in training, windows of it (stride half a window) at evaluation; None: whole records (PTB-XL benchmark: 2.5)
    window_aggregate: str = "mean"  # signal models with crop_seconds: window outputs combined by mean or max (PTB-XL benchmark: max)
    standardize: bool = False  # signal models: subtract the mean and divide by the std of the training values (PTB-XL benchmark)
    optimizer: str = "adam"  # adam (the paper; weight_decay is L2) | adamw (decoupled weight decay: the PTB-XL benchmark's fastai)
    signal_init: str = "fastai"  # xresnet1d101/inception1d from scratch: fastai (the architecture's init) | benchmark (then the PTB-XL benchmark's weight_init: every BatchNorm at 1/0)
    adam_beta2: float = 0.999  # Adam's beta2 (fastai and the PTB-XL benchmark: 0.99); beta1 cycles 0.95 -> 0.85 -> 0.95 with OneCycle
    ylim_mv: tuple[float, ...] | None = None  # amplitude range (lo, hi) of each lead band in mV; None: heartbeit the checkpoint's, else +-4 mV
    device: str | None = None  # cpu, cuda, cuda:N; None: cuda when available, else cpu
    amp: bool = True  # mixed precision on cuda
    select_on: str = "val"  # split choosing the best epoch: val (default), test (paper, optimistic) or last (no selection: PTB-XL benchmark)
    eval_every: int = 1  # score val/test/external every k epochs and at the last one (selection sees only scored epochs)
    val_fraction: str = "matched"  # matched: validation shrinks with fraction (nested, stratified, at least 50 per class: cohorts.splits.VAL_MIN_PER_CLASS) | full: whole split
    num_workers: int = 0  # DataLoader worker processes
    cache_images: bool = False  # render the store once into its uint8 render_cache/ (shared by a sweep's jobs) and keep splits in memory (small cohorts)
    out_root: str = "outputs"  # root of the run folders
    run_id: str | None = None  # run folder name; None: <task>-<model>-f<fraction>-s<seed>
    resume: bool = False  # continue an interrupted run folder from its last finished epoch (resume.pt, written every epoch when True)
    allow_pretrain_overlap: bool = False  # True: fine-tune even when the pretraining run trained on ECGs of this cohort's val/test/external patients (counts in metrics.json)

    choices: typing.ClassVar[dict[str, tuple]] = {"select_on": ("val", "test", "last"),
                                                  "val_fraction": ("matched", "full"),
                                                  "window_aggregate": ("mean", "max"), "optimizer": ("adam", "adamw"),
                                                  "signal_init": ("fastai", "benchmark")}
    path_components: typing.ClassVar[tuple[str, ...]] = ("run_id", "task", "model")  # the run folder's name

    def validate(self) -> None:
        models.model_family(self.model)  # UnknownModelError (a ValueError) for a typo
        if self.model_size and self.model_size not in models.model_sizes(self.model):
            raise runs.ConfigError(f"parameter 'model_size': {self.model_size!r} is not a size of "
                                   f"{self.model!r}; choose one of {models.model_sizes(self.model)}")
        if not 0.0 < self.fraction <= 1.0:
            raise runs.ConfigError(f"parameter 'fraction': {self.fraction} is not in (0, 1]")
        signal = models.model_family(self.model) == "signal"
        if not signal and (self.crop_seconds is not None or self.standardize):
            raise runs.ConfigError(f"parameters 'crop_seconds'/'standardize' apply to the signal models, not to "
                                   f"{self.model!r}; leave them at None/false")
        if self.crop_seconds is not None and not self.crop_seconds > 0:
            raise runs.ConfigError(f"parameter 'crop_seconds': {self.crop_seconds} must be None or > 0 s")
        if self.signal_init != "fastai" and self.model not in ("xresnet1d101", "inception1d"):
            raise runs.ConfigError(f"parameter 'signal_init': {self.signal_init!r} applies to xresnet1d101 and "
                                   f"inception1d from scratch, not to {self.model!r}")
        if not 0.0 < self.adam_beta2 < 1.0:
            raise runs.ConfigError(f"parameter 'adam_beta2': {self.adam_beta2} must lie in (0, 1)")
        for name in ("epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise runs.ConfigError(f"parameter {name!r}: {getattr(self, name)} must be >= 1")
        if self.image_size is not None and self.image_size < 8:
            raise runs.ConfigError(f"parameter 'image_size': {self.image_size} must be None (default) or >= 8 px")
        if not 0.0 < self.lr_start <= self.lr:
            raise runs.ConfigError(f"parameters 'lr_start'/'lr': need 0 < lr_start <= lr, got {self.lr_start}, {self.lr}")
        if self.signal_rate < 1:
            raise runs.ConfigError(f"parameter 'signal_rate': {self.signal_rate} Hz must be >= 1")
        if self.ylim_mv is not None and (len(self.ylim_mv) != 2 or not self.ylim_mv[0] < self.ylim_mv[1]):
            raise runs.ConfigError(f"parameter 'ylim_mv' must be None or two numbers lo < hi in mV, got {self.ylim_mv}")
        if not 0 < self.layer_decay <= 1:
            raise runs.ConfigError(f"parameter 'layer_decay' must lie in (0, 1], got {self.layer_decay}")
        if self.layer_decay < 1 and (models.model_family(self.model) == "signal"
                                     or models.model_spec(self.model).family not in TRANSFORMER_FAMILIES):
            raise runs.ConfigError(f"parameter 'layer_decay': {self.layer_decay} applies to the image transformers "
                                   f"(beit, vit families), not to {self.model!r}; leave it at 1")
        if self.weight_decay < 0 or self.num_workers < 0:
            raise runs.ConfigError("parameters 'weight_decay' and 'num_workers' must be >= 0")
        if not (self.device in (None, "auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise runs.ConfigError(f"parameter 'device': {self.device!r} is not auto, cpu, cuda, cuda:N or mps")
        if not self.run_id:
            object.__setattr__(self, "run_id", run_name(self.task, self.model, self.fraction, self.seed))


def run_name(task: str, model: str, fraction: float, seed: int) -> str:
    """Run folder name ``<task>-<model>-f<fraction>-s<seed>``, e.g. ``mi-heartbeit-f0.1-s0``."""
    return f"{task}-{model}-f{float(fraction)!r}-s{int(seed)}"
