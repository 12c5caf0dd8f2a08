"""The one declaration of 02_pretrain's parameters (both modalities): :class:`PretrainConfig`."""

from __future__ import annotations

import dataclasses

from heartbeit_lib.mim import tokenizers
from heartbeit_lib.models import registry as models
from heartbeit_lib.pipeline import runs


@dataclasses.dataclass(frozen=True)
class PretrainConfig(runs.TypedConfig):
    """Parameters of ``02_pretrain`` (names equal the notebook's parameters; YAML under
    ``parameters/02_pretrain/``).  Defaults are the paper's where it states them."""

    cohort_run: str | None = None  # 01_preprocess run folder (the cohort store); required
    modality: str = "image"  # image (BEiT MIM on rendered ECGs) or signal (ST-MEM on the same rows, pipeline.pretrain.signal)
    train_splits: tuple[str, ...] = ("train", "unassigned")  # store splits to pretrain on, minus every ECG of a patient with a val/test/external row
    eval_patients_of: tuple[str, ...] = ()  # fine-tuning cohort run folders whose eval_patients.txt patients are dropped (store built with their salt_file)
    keep_eval_patients: bool = False  # True: old behaviour, evaluation patients' ECGs stay in pretraining and tokenizer fitting (reported)
    val_split: str | None = "val"  # held-out split for masked-token accuracy; None: hold out val_fraction of patients
    val_fraction: float = 0.1  # held-out share of training patients when val_split is None or has no rows
    max_train: int | None = None  # cap on pretraining ECGs, seeded subsample; None for all
    max_val: int | None = None  # cap on held-out ECGs; None for all
    tokenizer: str = "ecg_kmeans"  # dalle | ecg_kmeans
    tokenizer_path: str | None = None  # tokenizer weights; None with ecg_kmeans: fit the codebook in this run
    trust_pickle: bool = False  # allow unpickling OpenAI's encoder.pkl, which can run code; prefer a converted state dict
    vocab_size: int = 512  # k-means codebook size when fitting; DALL-E: 8192, fixed by its weights
    tokenizer_fit_images: int = 2000  # rendered training ECGs used to fit the k-means codebook
    model_size: str = "base"  # base: the paper's, 86M params | small | tiny | micro
    image_size: int = 224  # image side in px, a multiple of 16; 224 as the paper
    layout: str = "stack8"  # render layout: stack8 as the paper | grid4x2 | clinical3x4
    ylim_mv: tuple[float, ...] = (-4.0, 4.0)  # amplitude range (lo, hi) of each lead band in mV, clipped beyond; the paper: (-2, 2)
    epochs: int = 300  # paper: 300
    batch_size: int = 128  # global batch over all processes (per optimizer step)
    accum_steps: int = 1  # micro-batches per optimizer step: each forward takes batch_size / processes / accum_steps ECGs (the paper's batch on one 40-80 GB GPU); same trajectory as the large batch
    lr: float = 5e-4  # peak AdamW learning rate, as the paper
    min_lr: float = 1e-5  # learning rate at the end of the cosine
    warmup_epochs: float = 10.0  # linear warmup
    weight_decay: float = 0.05  # AdamW weight decay, as BEiT
    layer_decay: float = 1.0  # layer-wise lr decay, 1 for off
    clip_grad: float = 3.0  # max gradient norm, 0 for off
    drop_path: float = 0.1  # stochastic depth rate
    num_masked: int = 75  # masked patches per image: 75 of 196, about 40%, as BEiT; scale with the grid
    min_block: int = 16  # smallest mask block in patches, as BEiT
    signal_rate: int = 100  # signal modality: input rate in Hz (store 500 Hz resampled), as the signal classifiers
    mask_ratio: float = 0.75  # signal modality: share of each lead's 0.3-s patches masked, as ST-MEM
    device: str | None = None  # cpu | cuda | cuda:N; None: cuda when available, else cpu
    amp: bool = True  # bf16 autocast on CUDA
    compile: bool = False  # torch.compile the model
    num_workers: int = 0  # DataLoader workers per process: render + masks
    threads: int | None = None  # torch CPU threads per process; None: torch's default; 1 on small shared CPUs
    save_every: int = 10  # keep checkpoints/epoch-XXXX.pt every N epochs; last.pt every epoch
    resume: bool = True  # continue from checkpoints/last.pt of this run folder
    progress: bool = True  # tqdm progress bars
    seed: int = 0  # model init, data order, masks, tokenizer fit
    out_root: str = "outputs"  # outputs root
    run_id: str | None = None  # run folder name; None: a timestamp

    choices = {"tokenizer": tokenizers.KINDS, "model_size": tuple(models.BEIT_SIZES), "modality": ("image", "signal")}

    def validate(self) -> None:
        if (self.threads is not None and self.threads < 1) or self.num_workers < 0:
            raise runs.ConfigError(f"parameters 'threads'/'num_workers' must be >= 1 (None: default) / >= 0, "
                                   f"got {self.threads}/{self.num_workers}")
        if not self.train_splits:
            raise runs.ConfigError("parameter 'train_splits' names no split")
        for name in ("max_train", "max_val"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise runs.ConfigError(f"parameter {name!r} must be >= 1 (None for all), got {getattr(self, name)}")
        pos = ("epochs", "batch_size", "accum_steps", "image_size", "vocab_size", "save_every")
        for name in pos:
            if getattr(self, name) < 1:
                raise runs.ConfigError(f"parameter {name!r} must be >= 1, got {getattr(self, name)}")
        if self.image_size % 16:
            raise runs.ConfigError(f"parameter 'image_size' must be a multiple of the 16-px patch, "
                                   f"got {self.image_size}")
        grid = (self.image_size // 16) ** 2
        if not 1 <= self.num_masked < grid:
            raise runs.ConfigError(f"parameter 'num_masked' must lie in 1..{grid - 1} for {self.image_size}-px "
                                   f"images ({grid} patches), got {self.num_masked}")
        if not (0 < self.lr and 0 <= self.min_lr <= self.lr):
            raise runs.ConfigError(f"parameters 'lr'/'min_lr' need 0 <= min_lr <= lr, 0 < lr; "
                                   f"got {self.lr}, {self.min_lr}")
        if not 0 < self.layer_decay <= 1:
            raise runs.ConfigError(f"parameter 'layer_decay' must lie in (0, 1], got {self.layer_decay}")
        if not 0 < self.mask_ratio < 1 or self.signal_rate < 1:
            raise runs.ConfigError(f"parameters 'mask_ratio'/'signal_rate' need 0 < mask_ratio < 1 and "
                                   f"signal_rate >= 1 Hz, got {self.mask_ratio}, {self.signal_rate}")
        if len(self.ylim_mv) != 2 or not self.ylim_mv[0] < self.ylim_mv[1]:
            raise runs.ConfigError(f"parameter 'ylim_mv' must be two numbers lo < hi in mV, got {self.ylim_mv}")
        if not 0 <= self.val_fraction < 1:
            raise runs.ConfigError(f"parameter 'val_fraction' must lie in [0, 1), got {self.val_fraction}")

    @property
    def grid(self) -> tuple[int, int]:
        return self.image_size // 16, self.image_size // 16
