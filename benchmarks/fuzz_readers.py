"""Fuzzing run of the ECG readers over mutated real files (issue 16).

Run from the repository root (needs ``../shared/data``)::

    nice -n 10 .venv/bin/python benchmarks/fuzz_readers.py --n 2400          # ~5-10 min on 2 cores

Seeds: the GE MUSE XML files of ``../shared/data/muse``, the CinC Challenge records (``.hea`` +
``.mat``) of ``../shared/data/cinc/records`` and PTB-XL records (``.hea`` + ``.dat``) of
``../shared/data/ptbxl/records100``. Each mutant copies one seed record into its own folder and
changes one of its files with one of these mutations (seeded, reproducible):

- ``byteflip``: 1-8 random bits flipped; ``truncate``: cut at a random byte; ``splice``: a random
  span deleted or random bytes inserted;
- ``field``: a numeric field value (MUSE element text, WFDB header token) replaced by a huge,
  tiny, negative, NaN/inf, non-numeric or very long value;
- ``xml``: XML structure mutations: an element dropped, duplicated or renamed, a tag left open,
  deep nesting, a flood of ``<?``, an entity declaration, long whitespace runs in text.

Each mutant is read with ``heartbeit_lib.io.read_ecg`` in a worker process with a time cap
(``--timeout`` s) and an address-space cap (``--mem-gb``). Outcomes:

- ``typed``: an ``ECGReadError`` naming the file (the goal for every bad file);
- ``ok``: success within bounds (finite float32, 50-10,000 Hz, |x| <= 100 mV: 50 mV per recorded
  lead, up to twice that for a derived limb lead);
- ``untyped``: any other exception; ``hang``: no answer within the time cap (worker killed);
  ``crash``: the worker died; ``absurd``: a success with non-finite or out-of-bounds values.

Then (issue 27; ``--classes-only`` runs just these) the hostile-input classes, each a fixed list of cases built in
a sandbox folder and run in the same capped worker:

- ``special_files``: FIFOs, directories, ``.``, ``/dev/zero`` as ``.hea`` / ``.xml`` / ``.dat`` / ``.mat`` / ``.npy``;
- ``huge_counts``: 50,000 or 10^9 signals, 10^12 samples, sample counts whose product overflows;
- ``sparse_files``: sparse 512 MiB - 1 GiB ``.dat`` / ``.xml`` / ``.mat`` files, a compressed ``.mat`` declaring 36 M
  samples (read with a 1 GiB cap), a ``.dat`` declaring 5,000 samples followed by 1 GiB (must read, within bounds);
- ``hostile_literals``: ``scp_codes`` literals and MUSE ``SampleExponent`` values that are not what they claim;
- ``hostile_run_folders``: ``model.json`` / ``config.yaml`` / ``metrics.json`` of a real micro run made hostile;
- ``path_components``: run ids, task and sweep names, Slurm values and ``str.format`` placeholders that would leave
  the run folder or inject a command (the sbatch text is executed by bash with a stub ``srun`` when it is built).

Every class case must be refused with a typed error of ``heartbeit_lib`` (a ``ValueError`` subclass) unless it is
marked as a positive control; after each case nothing may exist outside the sandbox's run root (``written``) and
the canary file of the injected command must not exist (``command``).
Writes ``outputs/fuzz/fuzz_readers.json`` (counts and every non-goal case) and prints the counts.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BAD_VALUES = ["1e308", "-1e308", "1e-320", "0", "-1", "-500", "NaN", "inf", "-inf", "abc", "", "1" * 5000,
              "9" * 30, "0x1F4", "５００", "²", "1e400", "4294967296", "-4294967297", "0.0001", "A" * 100_000, "B" * 300,
              "4000" + "0" * 300]
MUSE_FIELDS = ["SampleBase", "SampleExponent", "LeadAmplitudeUnitsPerBit", "LeadSampleCountTotal",
               "LeadByteCountTotal", "LeadDataCRC32", "NumberofLeads", "LeadSampleSize", "LeadAmplitudeUnits",
               "LeadID", "WaveformType", "PatientAge", "AcquisitionDate", "StmtText", "WaveFormData"]


def seeds() -> list[tuple[str, list[Path], str]]:
    """(kind, files of the record, entry file name) of every seed."""
    out = [("muse", [p], p.name) for p in sorted((SHARED / "muse").glob("*.xml"))]
    for hea in sorted((SHARED / "cinc" / "records").glob("*.hea"))[:20]:
        out.append(("cinc", [hea, hea.with_suffix(".mat")], hea.name))
    for hea in sorted((SHARED / "ptbxl" / "records100").rglob("*.hea"))[:20]:
        out.append(("ptbxl", [hea, hea.with_suffix(".dat")], hea.name))
    return [s for s in out if all(f.exists() for f in s[1])]


# ---------------------------------------------------------------------------- mutations
def byteflip(b: bytes, rng: np.random.Generator) -> bytes:
    a = bytearray(b)
    for _ in range(int(rng.integers(1, 9))):
        i = int(rng.integers(len(a)))
        a[i] ^= 1 << int(rng.integers(8))
    return bytes(a)


def truncate(b: bytes, rng: np.random.Generator) -> bytes:
    return b[: int(rng.integers(len(b)))]


def splice(b: bytes, rng: np.random.Generator) -> bytes:
    i = int(rng.integers(len(b)))
    if rng.random() < 0.5:
        return b[:i] + b[i + int(rng.integers(1, 200)):]
    return b[:i] + rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes() + b[i:]


def field_muse(b: bytes, rng: np.random.Generator) -> bytes:
    tag = MUSE_FIELDS[int(rng.integers(len(MUSE_FIELDS)))].encode()
    hits = [m for m in re.finditer(rb"<" + tag + rb">([^<]*)</" + tag + rb">", b)]
    if not hits:
        return byteflip(b, rng)
    m = hits[int(rng.integers(len(hits)))]
    value = BAD_VALUES[int(rng.integers(len(BAD_VALUES)))].encode("utf-8")
    return b[: m.start(1)] + value + b[m.end(1):]


def field_header(b: bytes, rng: np.random.Generator) -> bytes:
    lines = b.decode("latin-1").split("\n")
    i = int(rng.integers(len(lines)))
    tok = lines[i].split(" ")
    j = int(rng.integers(len(tok)))
    value = BAD_VALUES[int(rng.integers(len(BAD_VALUES)))]
    if rng.random() < 0.3 and tok[j]:  # keep the token's structure: gain(baseline)/units, fs/counter...
        tok[j] = re.sub(r"[-+]?\d+(?:\.\d*)?(?:e[-+]?\d+)?", value, tok[j], count=1)
    else:
        tok[j] = value
    if rng.random() < 0.1:
        tok[j] = rng.choice(["/etc/passwd", "../../x.dat", "..", "/dev/zero", "/proc/self/mem"])
    lines[i] = " ".join(tok)
    return "\n".join(lines).encode("latin-1", "replace")


def xml_structure(b: bytes, rng: np.random.Generator) -> bytes:
    kind = int(rng.integers(8))
    tags = re.findall(rb"<([A-Za-z][A-Za-z0-9]*)>", b)
    tag = tags[int(rng.integers(len(tags)))] if tags else b"RestingECG"
    m = re.search(rb"<" + tag + rb">.*?</" + tag + rb">", b, flags=re.S)
    if kind == 0 and m:  # drop an element
        return b[: m.start()] + b[m.end():]
    if kind == 1 and m:  # duplicate it
        return b[: m.end()] + m.group(0) + b[m.end():]
    if kind == 2 and m:  # rename it
        return b[: m.start()] + m.group(0).replace(tag, b"Renamed" + tag) + b[m.end():]
    if kind == 3 and m:  # leave it open
        return b[: m.end() - len(tag) - 3] + b[m.end():]
    if kind == 4:  # deep nesting
        depth = int(rng.integers(100, 20_000))
        i = b.find(b"<RestingECG>") + len(b"<RestingECG>")
        return b[:i] + b"<a>" * depth + b"</a>" * depth + b[i:]
    if kind == 5:  # a flood of <? after the root tag
        i = b.find(b"<RestingECG>") + len(b"<RestingECG>")
        return b[:i] + b"<?" * int(rng.integers(1000, 60_000))
    if kind == 6:  # entity declarations
        doc = b'<!DOCTYPE RestingECG [<!ENTITY e "' + b"x" * 1000 + b'">]>\n'
        return doc + re.sub(rb"^<\?xml[^>]*\?>\s*(<!DOCTYPE[^>]*>)?", b"", b)
    if m:  # long whitespace runs in an element's text
        return b[: m.end() - len(tag) - 3] + b" " * int(rng.integers(1000, 200_000)) + b[m.end() - len(tag) - 3:]
    return byteflip(b, rng)


def mutate(kind: str, files: list[Path], rng: np.random.Generator) -> tuple[str, str, dict[str, bytes]]:
    """(mutation name, mutated file name, {file name: bytes}) of one mutant of a seed record."""
    data = {f.name: f.read_bytes() for f in files}
    target = files[int(rng.integers(len(files)))] if rng.random() < 0.3 else files[0]
    b = data[target.name]
    text_target = target.suffix in (".xml", ".hea")
    choices = ["byteflip", "truncate", "splice"] + (["field", "field", "xml", "xml"] if kind == "muse" else
                                                   ["field", "field", "field"] if text_target else [])
    name = choices[int(rng.integers(len(choices)))]
    fn = {"byteflip": byteflip, "truncate": truncate, "splice": splice,
          "field": field_muse if kind == "muse" else field_header, "xml": xml_structure}[name]
    data[target.name] = fn(b, rng) if b else b
    return name, target.name, data


# ---------------------------------------------------------------------------- hostile-input classes (issue 27)
CANARY = "canary"
NL = "\ntouch {canary}\n"


def _mini_wfdb(d: Path, name: str = "rec") -> Path:
    """A real 12-lead PTB-XL record (100 Hz) copied as ``<d>/<name>.hea/.dat``."""
    hea = sorted((SHARED / "ptbxl" / "records100").rglob("*.hea"))[0]
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.dat").write_bytes(hea.with_suffix(".dat").read_bytes())
    (d / f"{name}.hea").write_text(hea.read_text().replace(hea.stem, name))
    return d / f"{name}.hea"


def _sparse(path: Path, size: int, head: bytes = b"") -> Path:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def _fifo(path: Path) -> Path:
    import os
    os.mkfifo(path)
    return path


def _special(d: Path, i: int):
    """(entry to read, positive control?) of special-file case ``i``."""
    import os
    hea = _mini_wfdb(d)
    cases = [lambda: _fifo(d / "f.hea"), lambda: _fifo(d / "f.xml"), lambda: _fifo(d / "f.npy"),
             lambda: (os.remove(d / "rec.dat"), _fifo(d / "rec.dat"), hea)[-1],
             lambda: (os.remove(d / "rec.dat"), (d / "rec.dat").mkdir(), hea)[-1],
             lambda: (hea.write_text(hea.read_text().replace("rec.dat", ".")), hea)[-1],
             lambda: ((d / "z.xml").symlink_to("/dev/zero"), d / "z.xml")[-1],
             lambda: ((d / "sub.hea").mkdir(), d / "sub.hea")[-1],
             lambda: (os.remove(d / "rec.dat"), (d / "rec.dat").symlink_to("/dev/zero"), hea)[-1]]
    return ("read", cases[i](), {"fs": 500, "leads": ["I", "II"]} if i == 2 else {}), len(cases)


def _huge_counts(d: Path, i: int):
    hea = _mini_wfdb(d)
    first, *rest = hea.read_text().splitlines()
    tok = first.split()
    variants = [["big 50000 100 1000"] + ["big.dat 16" for _ in range(50_000)],
                [" ".join([tok[0], "1000000000", *tok[2:]]), *rest],
                [" ".join([*tok[:3], "1000000000000"]), *rest],
                [" ".join([*tok[:3], "99999999999999999999"]), *rest],
                [" ".join([tok[0], "64", tok[2], "300000"]), *(rest * 6)[:64]]]
    target = d / ("big.hea" if i == 0 else "rec.hea")
    target.write_text("\n".join(variants[i]) + "\n")
    return ("read", target, {}), len(variants)


def _sparse_files(d: Path, i: int):
    import scipy.io
    hea = _mini_wfdb(d)
    first, *rest = hea.read_text().splitlines()
    n = len(variants := ["dat_no_count", "xml", "mat_compressed", "dat_declared"])
    v = variants[i]
    if v == "dat_no_count":
        hea.write_text(" ".join(first.split()[:3]) + "\n" + "\n".join(rest) + "\n")
        _sparse(d / "rec.dat", 512 * 2**20)
        return ("read", hea, {}), n
    if v == "xml":
        return ("read", _sparse(d / "s.xml", 2**30, b"<RestingECG>"), {}), n
    if v == "mat_compressed":
        lines = (SHARED / "cinc" / "records").glob("*.hea")
        src = sorted(lines)[0]
        (d / "m.hea").write_text(src.read_text().replace(src.stem, "m"))
        scipy.io.savemat(d / "m.mat", {"val": np.zeros((12, 3_000_000), np.int16)}, do_compression=True)
        return ("read", d / "m.hea", {}), n
    with open(d / "rec.dat", "r+b") as f:  # declared samples + 1 GiB beyond: reads only what is declared
        f.truncate(2**30)
    return ("read_ok", hea, {}), n


HOSTILE_LITERALS = ["{[1]: 2}", "[" * 5000 + "]" * 5000, "(" * 300 + ")" * 300, "x" * 10_000, "{'a': {'b': 1}}",
                    "{1: 2}", "{'SR': float('nan')}", "__import__('os').system('touch canary')", "{'a': 1e999}"]
EXPONENTS = ["+-1", "--1", "-+2", "1e1", "1 1", "0x1", "٣"]


def _literals(d: Path, i: int):
    if i < len(HOSTILE_LITERALS):
        return ("scp", HOSTILE_LITERALS[i], {}), len(HOSTILE_LITERALS) + len(EXPONENTS)
    muse = sorted((SHARED / "muse").glob("*.xml"))[0].read_bytes().decode("latin-1")
    e = EXPONENTS[i - len(HOSTILE_LITERALS)]
    muse = re.sub(r"<SampleExponent>[^<]*</SampleExponent>", f"<SampleExponent>{e}</SampleExponent>", muse) \
        if "<SampleExponent>" in muse else muse.replace("<SampleBase>", f"<SampleExponent>{e}</SampleExponent>"
                                                                      "<SampleBase>", 1)
    d.mkdir(parents=True, exist_ok=True)
    (d / "x.xml").write_bytes(muse.encode("latin-1", "xmlcharrefreplace"))
    return ("read", d / "x.xml", {}), len(HOSTILE_LITERALS) + len(EXPONENTS)


RUN_FOLDER_CASES = [("model.json", "not json {"), ("model.json", "[1, 2]"), ("model.json", {"num_classes": "two"}),
                    ("model.json", {"num_classes": 30_000_000}), ("model.json", {"image_size": 200_000}),
                    ("model.json", {"normalize_mean": []}), ("model.json", {"normalize_mean": "text"}),
                    ("model.json", {"normalize_std": [0.0, 0.0, 0.0]}), ("model.json", {"ylim_mv": [-1e9, 1e9]}),
                    ("model.json", {"patch_size": 0}), ("config.yaml", "!!python/object/apply:os.system ['touch canary']"),
                    ("config.yaml", "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
                                    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c]\n"),
                    ("config.yaml", "- a list"), ("metrics.json", {"best_epoch": "last"}),
                    ("metrics.json", {"best_epoch": -3}), ("model.json", None)]  # None: the untouched folder


def _run_folder(d: Path, i: int):
    import json

    import torch
    import yaml

    from heartbeit_lib.classify import checkpoint
    from heartbeit_lib.models import registry as models
    run = d / "runs" / "toy-vit_b16_scratch-f1.0-s0"
    run.mkdir(parents=True)
    torch.manual_seed(0)
    m = models.create_model("vit_b16_scratch", size="micro", img_size=32, num_classes=2)
    checkpoint.save_best_weights(m, run)
    checkpoint.write_model_record(run, m, "vit_b16_scratch", "micro", 32, "stack8", ((0.5,) * 3, (0.25,) * 3))
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "toy", "model": "vit_b16_scratch", "image_size": 32}))
    (run / "metrics.json").write_text(json.dumps({"best_epoch": 1}))
    name, value = RUN_FOLDER_CASES[i]
    if isinstance(value, dict):
        rec = json.loads((run / name).read_text())
        rec.update(value)
        (run / name).write_text(json.dumps(rec))
    elif value is not None:
        (run / name).write_text(value)
    return ("run_folder" if value is not None else "run_folder_ok", run, {}), len(RUN_FOLDER_CASES)


PATH_CASES = ["run_id:../../x", "run_id:/tmp/fuzz-abs-run", "run_id:a/b", "run_id:..", "run_id:x" * 300,
              "task:../../../victim", "task:/abs/victim", "name:s" + NL, "partition:gpu" + NL, "qos:normal" + NL,
              "sbatch_key:qos" + NL.replace("=", ""), "log_dir:logs" + NL, "time_min:10" + NL, "mem_gb:8" + NL,
              "gpus:1" + NL, "out_root:o" + NL, "account:lab" + NL, "constraint:a100" + NL, "setup:true" + NL,
              "format:{0}", "format:{task.nope}", "format:{task[0]}", "format:{task!r}", "format:{nope}",
              "launch_partition:gpu" + NL, "launch_sbatch:qos=high" + NL, "launch_log_dir:l" + NL, "ok:"]


def _path_case(d: Path, i: int):
    return ("path", PATH_CASES[i], {}), len(PATH_CASES)


CLASSES = {"special_files": _special, "huge_counts": _huge_counts, "sparse_files": _sparse_files,
           "hostile_literals": _literals, "hostile_run_folders": _run_folder, "path_components": _path_case}


N_CASES = {"special_files": 9, "huge_counts": 5, "sparse_files": 4, "hostile_literals": len(HOSTILE_LITERALS) + len(EXPONENTS),
           "hostile_run_folders": len(RUN_FOLDER_CASES), "path_components": len(PATH_CASES)}


def _sweep_yaml(d: Path, key: str, value: str) -> tuple[Path, str | None]:
    import yaml
    data = {"name": "s", "out_root": str(d / "root"), "executor": "slurm",
            "grid": {"task": ["toy"], "model": ["resnet152_scratch"], "fraction": [1.0], "seed": [0]},
            "params": {"cohort_run": str(d / "root" / "01_preprocess" / "{task}"), "epochs": 1, "image_size": 32,
                       "model_size": "micro", "device": "cpu"},
            "resources": {"default": {"partition": "gpu", "gpus": 1, "cpus": 2, "mem_gb": 8, "time_min": 10,
                                      "sbatch": {"qos": "normal"}}}}
    out_root = None
    res = data["resources"]["default"]
    if key in ("name", "log_dir"):
        data[key] = value if key == "name" else str(d / "root" / value)
    elif key == "task":
        data["grid"]["task"] = [value]
    elif key == "qos":
        res["sbatch"] = {"qos": value}
    elif key == "sbatch_key":
        res["sbatch"] = {value + "#": "normal"}
    elif key == "format":
        data["params"]["cohort_run"] = value
    elif key == "out_root":
        out_root = str(d / "root" / value)
    elif key in ("partition", "account", "constraint", "time_min", "mem_gb", "gpus"):
        res[key] = value
    elif key == "setup":
        res["setup"] = [value]
    (d / "sweep.yaml").write_text(yaml.safe_dump(data))
    return d / "sweep.yaml", out_root


def _run_sbatch_text(ex, d: Path) -> None:
    """Run the sbatch script submitit would write, with bash and a no-op ``srun`` (what a job would run)."""
    import os
    import subprocess
    ex.parameters["map_count"] = 1
    text = ex._make_submission_file_text(ex._submitit_command_str, "uid")
    (d / "bin").mkdir(exist_ok=True)
    (d / "bin" / "srun").write_text("#!/bin/sh\nexit 0\n")
    (d / "bin" / "srun").chmod(0o755)
    subprocess.run(["bash", "-c", text], env={**os.environ, "PATH": f"{d / 'bin'}:{os.environ['PATH']}"},
                   capture_output=True, timeout=30, cwd=d)


def _path(d: Path, case: str) -> None:
    """Run one path-component / command-injection case inside ``d/root`` (raises what the code raises)."""
    import submitit

    from heartbeit_lib import launch
    from heartbeit_lib.pipeline import predict, runs, sweep
    submitit.SlurmExecutor.affinity = classmethod(lambda cls: 2)  # pretend srun exists (no cluster here)
    key, _, value = case.partition(":")
    value = value.replace("{canary}", str(d / CANARY))
    if key == "run_id":
        cfg = predict.PredictConfig.from_dict({"finetune_runs": ["r"], "data_root": "d", "run_id": value,
                                               "out_root": str(d / "root")})
        runs.start_run("07_predict", cfg)
        return
    if key.startswith("launch_"):
        opt = "--" + key[len("launch_"):].replace("_", "-")
        args, _ = launch.parse(["pretrain", "--nodes", "1", "--gpus-per-node", "1", "--log-dir", str(d / "root" / "l"),
                                opt, value if opt != "--log-dir" else str(d / "root" / value)])
        _run_sbatch_text(launch.make_executor(args), d)
        return
    if key == "ok":
        spec = sweep.load_sweep(_sweep_yaml(d, "ok", "")[0])
        _run_sbatch_text(sweep.slurm_executor(spec, "resnet152_scratch"), d)
        return
    path, out_root = _sweep_yaml(d, key, value)
    spec = sweep.load_sweep(path, out_root=out_root)
    if key == "task":
        sweep.run_sweep(spec, lambda *a, **k: None, progress=False)
    _run_sbatch_text(sweep.slurm_executor(spec, "resnet152_scratch"), d)


def run_class_case(cls: str, i: int, sandbox: str) -> tuple:
    """Outcome of class case ``i`` built in ``sandbox`` (see the module docstring)."""
    from heartbeit_lib import io
    d = Path(sandbox)
    (d / "outside").mkdir(parents=True)
    (d / "outside" / "precious.txt").write_text("keep")
    victim = d / "victim-resnet152_scratch-f1.0-s0"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    before = sorted(str(p) for p in d.iterdir())
    try:
        (what, arg, kw), _ = CLASSES[cls](d / "root" if cls != "path_components" else d, i)
    except BaseException as e:  # noqa: BLE001 - the case could not be built: a bug of this script
        return ("setup_error", type(e).__name__, False, repr(e)[:300])
    expect_ok = what in ("read_ok", "run_folder_ok") or arg == "ok:"
    try:
        if what in ("read", "read_ok"):
            rec = io.read_ecg(arg, **kw)
            x = np.asarray(rec.signal)
            if not (np.isfinite(x).all() and 50 <= rec.fs <= 10_000):
                return ("absurd", "non-finite or out of bounds", False, "")
        elif what == "scp":
            io.parse_scp_codes(arg, "ptbxl_database.csv", "ecg_id 1")
        elif what in ("run_folder", "run_folder_ok"):
            from heartbeit_lib.classify import checkpoint
            checkpoint.load_finetune_run(arg)
            checkpoint.read_metrics(arg)
        else:
            _path(d, arg)
        outcome = ("ok", "", True, "") if expect_ok else ("absurd", "accepted a value it must refuse", False, "")
    except ValueError as e:
        typed = type(e).__module__.startswith("heartbeit_lib")
        outcome = (("typed" if not expect_ok else "absurd") if typed else "untyped", type(e).__name__, typed,
                   str(e)[:300])
    except BaseException as e:  # noqa: BLE001 - what we are looking for
        outcome = ("untyped", type(e).__name__, False, repr(e)[:300])
    extra = sorted(set(str(p) for p in d.iterdir()) - set(before) - {str(d / "root"), str(d / "sweep.yaml"),
                                                                     str(d / "bin"), str(d / CANARY)})
    if (d / CANARY).exists():
        return ("command", "the injected command ran", False, outcome[3])
    if extra or not (victim / "precious.txt").exists() or not (d / "outside" / "precious.txt").exists():
        return ("written", f"outside the run root: {extra[:3]}", False, outcome[3])
    return outcome


# ---------------------------------------------------------------------------- worker
def _worker(conn, mem_gb: float, code: str) -> None:
    """Read each path sent on ``conn``; answer with the outcome. Capped address space."""
    limit = int(mem_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.path.insert(0, code)
    from heartbeit_lib import io  # noqa: E402  (imported after the cap, in the worker only)

    while True:
        path = conn.recv()
        if path is None:
            return
        if isinstance(path, tuple) and path[0] == "warm":  # the pipeline's imports, outside the timed cases
            import heartbeit_lib.classify.checkpoint  # noqa: F401
            import heartbeit_lib.launch  # noqa: F401
            import heartbeit_lib.pipeline.predict  # noqa: F401
            import heartbeit_lib.pipeline.sweep  # noqa: F401
            conn.send(("ok", "", True, ""))
            continue
        if isinstance(path, tuple):  # ("class", class name, case index, sandbox folder)
            conn.send(run_class_case(*path[1:]))
            continue
        try:
            rec = io.read_ecg(path)
        except io.ECGReadError as e:
            named = Path(path).name in str(e) or Path(e.path).parent == Path(path).parent
            conn.send(("typed", type(e).__name__, named, str(e)[:300]))
            continue
        except BaseException as e:  # noqa: BLE001 - what we are looking for
            conn.send(("untyped", type(e).__name__, False, repr(e)[:300]))
            continue
        x = np.asarray(rec.signal)
        problems = []
        if x.dtype != np.float32 or not np.isfinite(x).all():
            problems.append("non-finite or not float32")
        elif x.size and float(np.abs(x).max()) > 100_000:
            problems.append(f"|x| = {float(np.abs(x).max()):.3g} uV")
        if not (50.0 <= rec.fs <= 10_000.0):
            problems.append(f"fs = {rec.fs!r}")
        conn.send(("absurd" if problems else "ok", "; ".join(problems), True, ""))


class Worker:
    def __init__(self, mem_gb: float, code: str, pipeline: bool = False):
        self.mem_gb, self.code, self.pipeline = mem_gb, code, pipeline
        self.start()

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, self.mem_gb, self.code), daemon=True)
        self.proc.start()
        self.conn.send(str(SHARED / "muse" / "easyrecg_muse_ecg1.xml"))  # warm up: imports are not timed
        self.conn.recv()
        if self.pipeline:
            self.conn.send(("warm",))
            self.conn.recv()

    def read(self, path: str, timeout: float) -> tuple:
        try:
            self.conn.send(path)
            if self.conn.poll(timeout):
                return self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(1)
            code = self.proc.exitcode
            self.start()
            return ("crash", f"exit code {code}", False, "")
        self.proc.kill()
        self.proc.join()
        self.start()
        return ("hang", f"> {timeout:g} s", False, "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2400, help="number of mutants")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per read")
    ap.add_argument("--mem-gb", type=float, default=4.0, help="address-space cap of the worker, GiB")
    ap.add_argument("--code", type=Path, default=REPO, help="repository whose heartbeit_lib is fuzzed")
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "fuzz" / "fuzz_readers.json")
    ap.add_argument("--classes-only", action="store_true", help="only the hostile-input classes of issue 27")
    args = ap.parse_args()
    if args.classes_only:
        args.n = 0

    rng = np.random.default_rng(args.seed)
    pool = seeds()
    worker = Worker(args.mem_gb, str(args.code.resolve()))
    counts: Counter = Counter()
    by_kind: Counter = Counter()
    cases, slowest = [], (0.0, "")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fuzz_readers_") as tmp:
        for k in range(args.n):
            kind, files, entry = pool[k % len(pool)]
            mutation, target, data = mutate(kind, files, rng)
            d = Path(tmp) / f"m{k:05d}"
            d.mkdir()
            for name, b in data.items():
                (d / name).write_bytes(b)
            t0 = time.perf_counter()
            outcome, what, named, msg = worker.read(str(d / entry), args.timeout)
            dt = time.perf_counter() - t0
            slowest = max(slowest, (dt, f"{kind}/{entry} {mutation} of {target}"))
            if outcome == "typed" and not named:
                outcome = "typed_unnamed"
            counts[outcome] += 1
            by_kind[f"{kind}:{mutation}:{outcome}"] += 1
            if outcome not in ("typed", "ok"):
                cases.append({"mutant": k, "seed": f"{kind}/{entry}", "mutation": mutation, "target": target,
                              "outcome": outcome, "what": what, "message": msg})
                print(f"[{outcome}] m{k:05d} {kind}/{entry} {mutation} of {target}: {what} {msg[:160]}", flush=True)
            shutil.rmtree(d)
        class_counts: dict[str, Counter] = {}
        # the pipeline's imports (torch, OpenCV) map more address space than the readers' cap allows
        pipeline_worker = Worker(args.mem_gb + 12, str(args.code.resolve()), pipeline=True)
        for cls in CLASSES:
            w = pipeline_worker if cls in ("path_components", "hostile_run_folders") else worker
            for i in range(N_CASES[cls]):
                d = Path(tmp) / f"{cls}-{i:03d}"
                d.mkdir()
                t0 = time.perf_counter()
                outcome, what, named, msg = w.read(("class", cls, i, str(d)), args.timeout)
                dt = time.perf_counter() - t0
                slowest = max(slowest, (dt, f"{cls} case {i}"))
                class_counts.setdefault(cls, Counter())[outcome] += 1
                counts[f"class_{outcome}"] += 1
                if outcome not in ("typed", "ok"):
                    cases.append({"class": cls, "case": i, "outcome": outcome, "what": what, "message": msg})
                    print(f"[{outcome}] {cls} case {i}: {what} {msg[:160]}", flush=True)
                shutil.rmtree(d, ignore_errors=True)
        pipeline_worker.conn.send(None)
    worker.conn.send(None)
    wall = time.perf_counter() - t_start
    by_mutation: dict[str, dict[str, int]] = {}
    for key, v in by_kind.items():
        _, mutation, outcome = key.split(":")
        by_mutation.setdefault(mutation, {}).setdefault(outcome, 0)
        by_mutation[mutation][outcome] += v
    result = {"n": args.n, "code": str(args.code), "by_mutation": by_mutation,
              "classes": {k: dict(v) for k, v in class_counts.items()}, "seeds": len(pool), "counts": dict(counts), "by_kind": dict(sorted(by_kind.items())),
              "slowest_s": round(slowest[0], 3), "slowest": slowest[1], "wall_s": round(wall, 1),
              "timeout_s": args.timeout, "mem_gb": args.mem_gb, "cases": cases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("cases", "by_kind")}, indent=2))


if __name__ == "__main__":
    main()
