"""One prepared GPU check (issues 17, 25), driven by ``benchmarks/gpu_check.sh``; prints one table.

Rows (each ``value`` with its unit, ``skipped: <why>`` or ``failed: <error>``; a failing row is recorded and the
next one runs; the table file is rewritten after every row, so a timeout keeps what was measured), cheap first:

1. pretraining step images/s at BEiT-base/224, bf16, batch 128: a plain timm step (2-class head) and the MIM step
   (vocabulary 8192, 75 of 196 patches masked), eager;
2. the torch renderer (``render.render_ecg_torch``) in ECGs/s at batch 1024 on the GPU;
3. the DALL-E-sized encoder (random weights) in images/s at the real input (224-px images, as the token
   precompute feeds it), bf16 autocast;
4. the loader's images/s at 1, 4, 8 and 12 workers (uint8 grey; float32 RGB "before" at 1 worker);
5. ``pipeline.pretrain.run`` through the real training loop at base/224 (50 steps of 128 ECGs; DALL-E-sized
   encoder with random weights for the token precompute, so no download): one process (images/s, data-wait
   share, peak memory); two processes sharing the one GPU over gloo (the DDP path on a single chip) against it;
   the resume of that 2-process run on 1 process; and last one process with ``compile: true``.

``--smoke`` runs the same code at toy sizes on CPU (tests/test_gpu_check.py), with the GPU rows skipped and the
runs of row 5 only with ``--smoke-ddp``.  Subcommand ``ddp`` is what torchrun (or one process) starts for row 5.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import bench_pretrain as bp  # benchmarks/ is on sys.path when this file runs as a script
from heartbeit_lib import render
from heartbeit_lib.models import registry as models
from heartbeit_lib.mim import masking, tokenizers
from heartbeit_lib.mim.model import MIMModel, mim_targets

ROWS: list[tuple[str, str]] = []
STATE = {"head": "", "out": None, "t0": time.perf_counter()}


def table() -> str:
    width = max([len(w) for w, _ in ROWS] + [20])
    return "\n".join([STATE["head"], "-" * (width + 40)] + [f"{w:<{width}}  {v}" for w, v in ROWS]
                     + [f"total {time.perf_counter() - STATE['t0']:.0f} s"])


def row(what: str, value: str) -> None:
    """Add a row; the table file is rewritten after every row, so a timeout still leaves what was measured."""
    ROWS.append((what, value))
    print(f"  {what}: {value}", flush=True)
    if STATE["out"]:
        Path(STATE["out"]).mkdir(parents=True, exist_ok=True)
        (Path(STATE["out"]) / "gpu_check.txt").write_text(table() + "\n")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn, dev: torch.device, warmup: int, steps: int) -> float:
    """Median seconds per call after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_rates(dev: torch.device, size: str, img: int, batch: int, vocab: int, steps: int, compile_: bool) -> None:
    """Row 1: plain timm step vs MIM step, images/s."""
    grid = (img // 16, img // 16)
    k = masking.num_masked_for(grid)
    rng = np.random.default_rng(0)
    mask = torch.from_numpy(masking.block_masks(rng, batch, grid, k, min_block=max(1, round(16 * k / 75)))).to(dev)
    images = torch.randn(batch, 3, img, img, device=dev)
    labels = torch.randint(0, 2, (batch,), device=dev)
    tokens = torch.randint(0, vocab, (batch, *grid), device=dev)
    amp = dev.type == "cuda"
    fused = {"fused": True} if dev.type == "cuda" else {}
    for comp in (compile_,):
        tag = "compiled" if comp else "eager"
        torch.manual_seed(0)
        plain = models.create_backbone(size, img_size=img, num_classes=2, drop_path_rate=0.1).to(dev)
        mim = MIMModel(models.create_backbone(size, img_size=img, drop_path_rate=0.1), vocab).to(dev)
        opt_p = torch.optim.AdamW(plain.parameters(), lr=1e-4, **fused)
        opt_m = torch.optim.AdamW([p for p in mim.parameters() if p.requires_grad], lr=1e-4, **fused)
        f_plain, f_mim = (torch.compile(plain), torch.compile(mim)) if comp else (plain, mim)

        def step_plain():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                out = f_plain(images)
            F.cross_entropy(out.float(), labels).backward()
            opt_p.step()
            opt_p.zero_grad(set_to_none=True)

        def step_mim():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                out = f_mim(images, mask, k)
            F.cross_entropy(out.float(), mim_targets(tokens, mask, k)).backward()
            opt_m.step()
            opt_m.zero_grad(set_to_none=True)

        try:
            tp = _timed(step_plain, dev, 3, steps)
            tm = _timed(step_mim, dev, 3, steps)
            row(f"plain timm step, BEiT-{size}/{img}, batch {batch}, {tag}", f"{batch / tp:,.0f} images/s")
            row(f"MIM step, vocab {vocab}, {k} masked, {tag}", f"{batch / tm:,.0f} images/s "
                f"({100 * (tp / tm - 1):+.0f}% time vs plain)")
        except Exception as e:  # a compile failure is a finding, not the end of the check
            row(f"steps, BEiT-{size}/{img}, {tag}", f"failed: {type(e).__name__}: {str(e)[:120]}")
        del plain, mim, opt_p, opt_m, f_plain, f_mim
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def loader_rows(img: int, batch: int, n_batches: int, n_ecgs: int) -> None:
    """Row 2: images/s of one loader worker, before and after."""
    for name, rate in bp.loader_rates(img, batch, n_batches, 1, n_ecgs).items():
        row(f"loader, 1 worker, {img}px, batch {batch}, {name}", f"{rate:,.0f} images/s")


def renderer_row(dev: torch.device, batch: int, img: int, reps: int) -> None:
    """Row 3: render_ecg_torch ECGs/s on the device."""
    x = torch.from_numpy(bp.ecg_like(batch)).to(dev)
    t = _timed(lambda: render.render_ecg_torch(x, img), dev, 2, reps)
    row(f"torch renderer, batch {batch}, {img}px, on {dev.type}", f"{batch / t:,.0f} ECGs/s")


def attempt(what: str, fn, *args, **kw) -> None:
    """Run one row's measurement; an exception becomes a ``failed`` row and the check goes on.
    ``GPU_CHECK_FAIL_ROW=<text>`` makes the rows whose name contains it fail (the CPU test of this rule)."""
    try:
        if os.environ.get("GPU_CHECK_FAIL_ROW") and os.environ["GPU_CHECK_FAIL_ROW"] in what:
            raise RuntimeError("injected by GPU_CHECK_FAIL_ROW")
        fn(*args, **kw)
    except Exception as e:  # noqa: BLE001 - any failure is a finding of the one-shot check
        row(what, f"failed: {type(e).__name__}: {str(e)[:200]}")


def loader_worker_rows(img: int, batch: int, n_batches: int, n_ecgs: int, workers: list[int]) -> None:
    """Row 4 beyond one worker: uint8 images/s at each worker count (the float32 path only at 1, above); each
    worker delivers 3 timed batches after the first (start-up excluded)."""
    for w in workers:
        def one() -> None:
            rate = bp.loader_rates(img, batch, 3 * w, w, max(n_ecgs, batch * (3 * w + 2)), after_only=True)
            row(f"loader, {w} workers, {img}px, batch {batch}, uint8", f"{rate['uint8 (B, H, W), after']:,.0f} images/s")

        attempt(f"loader, {w} workers", one)


def encoder_row(dev: torch.device, img: int, batch: int, reps: int, n_hid: int) -> None:
    """Row 3: DALL-E-sized encoder (random weights) images/s on ``img``-px images (the tokenizer's own resize to
    its input view included), bf16 autocast on CUDA."""
    tok = tokenizers.DalleTokenizer(tokenizers.DalleEncoder(n_hid=n_hid), device=dev, batch_size=batch)
    images = torch.randint(0, 256, (batch, img, img), dtype=torch.uint8, device=dev)
    t = _timed(lambda: tok.tokenize(images), dev, 1, reps)
    row(f"DALL-E encoder (n_hid {n_hid}), {img}px images, batch {batch}, amp={tok.amp}", f"{batch / t:,.0f} images/s")


# ---------------------------------------------------------------- row 5: 2-process run + 1-process resume


def _ddp_params(args, root: Path, epochs: int, run_id: str) -> list[str]:
    p = {"cohort_run": str(root / "store"), "tokenizer": "dalle", "tokenizer_path": str(root / "dalle.pt"),
         "model_size": args.size, "image_size": args.img, "epochs": epochs, "batch_size": args.ddp_batch,
         "warmup_epochs": 0.5, "num_masked": masking.num_masked_for((args.img // 16,) * 2),
         "min_block": max(1, round(16 * masking.num_masked_for((args.img // 16,) * 2) / 75)),
         "val_split": "None", "val_fraction": 0.05, "max_val": args.ddp_batch, "num_workers": args.workers,
         "progress": "false", "save_every": 1, "out_root": str(root / "out"), "run_id": run_id,
         "compile": "false", "device": "cpu" if args.smoke else "None"}
    return [x for k, v in p.items() for x in ("-p", k, str(v))]


def ddp_prepare(args, root: Path) -> None:
    """A store of ``steps x batch`` synthetic ECGs (plus the held-out share) and random DALL-E weights."""
    from heartbeit_lib import cohorts  # imports io (defusedxml); gpu_check.sh stubs it where missing
    import pandas as pd

    n = int(args.ddp_steps * args.ddp_batch / 0.95) + args.ddp_batch
    meta = pd.DataFrame({"record_id": [f"r{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
                         "site": "synthetic", "label": -1})
    cohorts.build_store_from_arrays(root / "store", bp.ecg_like(n), meta, task="unlabelled", shard_size=2048)
    torch.manual_seed(0)
    torch.save(tokenizers.DalleEncoder(n_hid=args.n_hid).state_dict(), root / "dalle.pt")


def _pretrain_run(args, root: Path, nproc: int, run_id: str, env: dict, **extra) -> tuple[dict, float]:
    """One ``pretrain.run`` of ``nproc`` processes (torchrun for 2); returns (its last log line, wall seconds).
    Raises RuntimeError with the tail of its output when it fails."""
    me = str(Path(__file__).resolve())
    params = _ddp_params(args, root, 2, run_id) + [x for k, v in extra.items() for x in ("-p", k, str(v))]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", me, "ddp"]
           if nproc > 1 else [sys.executable, me, "ddp"]) + params
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.ddp_timeout)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"rc {r.returncode}: {(r.stderr or r.stdout)[-300:]!r}")
    log = [json.loads(x) for x in (root / "out" / "02_pretrain" / run_id / "log.jsonl").read_text().splitlines()]
    return log[-1], wall


def _describe(line: dict, wall: float) -> str:
    mem = f"{line['max_memory_gb']:.1f} GB peak" if "max_memory_gb" in line else "peak memory n/a (CPU)"
    return (f"{line['images_per_s']:,.0f} images/s, data wait {100 * line['data_wait_s'] / line['epoch_time_s']:.0f}% "
            f"of the epoch, {mem}; {wall:.0f} s wall with start-up")


def ddp_rows(args) -> None:
    """Row 5: one process, two processes on the one device over gloo, the 2 -> 1 resume, then compile."""
    root = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    ddp_prepare(args, root)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    stop1 = dict(env, GPU_CHECK_STOP_AFTER="1")
    what = f"pretrain.run, {args.size}/{args.img}, {args.ddp_steps} steps of {args.ddp_batch}"
    one: dict = {}

    def single() -> None:
        line, wall = _pretrain_run(args, root, 1, "one", stop1)
        tok = json.loads(next((root / "store" / "tokens").glob("*.json")).read_text())
        one.update(line)
        row(f"{what}, 1 process, eager", _describe(line, wall) + f" (incl. token precompute of {tok['shape'][0]} ECGs)")

    def two() -> None:
        line, wall = _pretrain_run(args, root, 2, "ddp", dict(stop1, HEARTBEIT_DIST_BACKEND="gloo"))
        vs = f" = {line['images_per_s'] / one['images_per_s']:.2f} x the 1-process run" if one else ""
        row(f"{what}, 2 processes on one device (gloo), epoch 1 of 2", _describe(line, wall) + vs + "; killed after it")

    def resume() -> None:
        _, wall = _pretrain_run(args, root, 1, "ddp", env)
        m = json.loads((root / "out" / "02_pretrain" / "ddp" / "metrics.json").read_text())
        ok = m["resumed_from_epoch"] == 1 and m["epochs_done"] == 2 and m["world_size"] == 1
        row("resume of that run on 1 process (epoch 2)", f"{'ok' if ok else 'WRONG'}: resumed from epoch "
            f"{m['resumed_from_epoch']}, {m['epochs_done']} epochs, {m['images_per_s_last_epoch']:,.0f} images/s, "
            f"{wall:.0f} s wall; masked-token acc {m.get('final_val_acc', float('nan')):.3f}")

    def compiled() -> None:
        if time.perf_counter() - STATE["t0"] > args.compile_after_s:
            row(f"{what}, 1 process, compile", f"skipped: {args.compile_after_s} s budget spent")
            return
        line, wall = _pretrain_run(args, root, 1, "compiled", stop1, compile="true")
        row(f"{what}, 1 process, compile", _describe(line, wall) + " (compile time in the wall)")

    attempt(f"{what}, 1 process, eager", single)
    attempt(f"{what}, 2 processes on one device (gloo)", two)
    attempt("resume of that run on 1 process", resume)
    if args.smoke:
        row(f"{what}, 1 process, compile", "skipped: --smoke")
    else:
        attempt(f"{what}, 1 process, compile", compiled)


def ddp_main(argv: list[str]) -> int:
    """What torchrun starts: ``heartbeit_lib.pretrain`` with -p parameters (the run folder is made by rank 0)."""
    import functools

    from heartbeit_lib.pipeline import pretrain  # imports runs (papermill, nbconvert): stubbed where missing

    stop = int(os.environ.get("GPU_CHECK_STOP_AFTER", "0"))
    if stop:  # simulate a kill after epoch `stop` (every rank stops after the epoch's checkpoint and barrier)
        def on_epoch_end(epoch: int, line: dict) -> None:
            if epoch >= stop:
                raise _Stopped

        # the image story's run() calls its own module's train
        pretrain.image.train = functools.partial(pretrain.image.train, on_epoch_end=on_epoch_end)
    try:
        return pretrain.main(argv)
    except _Stopped:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        return 0


class _Stopped(Exception):
    """Raised after the epoch named by GPU_CHECK_STOP_AFTER."""


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "ddp":
        return ddp_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="toy sizes on CPU (the CPU test)")
    ap.add_argument("--smoke-ddp", action="store_true", help="with --smoke: also the 2-process run (gloo)")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.txt (default $OUT)")
    ap.add_argument("--compile-after-s", type=int, default=330, help="skip the compiled run after this many s")
    args = ap.parse_args()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    dev = torch.device("cuda" if gpus else "cpu")
    if args.smoke:
        args.size, args.img, args.batch, args.vocab, args.steps, args.n_hid = "micro", 32, 4, 64, 2, 4
        args.ddp_batch, args.ddp_steps, args.workers, args.ddp_timeout = 4, 3, 0, 600
        loader = dict(img=32, batch=8, n_batches=3, n_ecgs=64)
    else:
        args.size, args.img, args.batch, args.vocab, args.steps, args.n_hid = "base", 224, 128, 8192, 10, 256
        args.ddp_batch, args.ddp_steps, args.workers, args.ddp_timeout = 128, 50, 8, 200
        loader = dict(img=224, batch=128, n_batches=12, n_ecgs=1024)
    head = (f"gpu_check: torch {torch.__version__}, {gpus} GPU(s)"
            + (f" ({torch.cuda.get_device_name(0)})" if gpus else "") + f", {os.cpu_count()} CPUs"
            + (", SMOKE (toy sizes)" if args.smoke else ""))
    print(head, flush=True)
    STATE.update(head=head, out=args.out)
    if gpus or args.smoke:
        attempt("pretraining steps", step_rates, dev, args.size, args.img, args.batch, args.vocab, args.steps,
                compile_=False)
        attempt("torch renderer", renderer_row, dev, 1024 if gpus else 16, args.img, 10 if gpus else 1)
        attempt("DALL-E encoder", encoder_row, dev, args.img, 256 if gpus else 2, 5 if gpus else 1, args.n_hid)
    else:
        row("pretraining steps / torch renderer / DALL-E encoder", "skipped: no GPU")
    attempt("loader, 1 worker", loader_rows, **loader)
    loader_worker_rows(**loader, workers=[2] if args.smoke else [4, 8, 12])
    if gpus or (args.smoke and args.smoke_ddp):
        attempt("pretrain.run rows", ddp_rows, args)
    else:
        row("pretrain.run: 1 process, 2 processes on one device, resume, compile",
            "skipped: --smoke" if args.smoke else "skipped: no GPU")
    print("\n" + table())
    if args.out:
        (Path(args.out) / "gpu_check.txt").write_text(table() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
