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
    def __init__(self, mem_gb: float, code: str):
        self.mem_gb, self.code = mem_gb, code
        self.start()

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, self.mem_gb, self.code), daemon=True)
        self.proc.start()
        self.conn.send(str(SHARED / "muse" / "easyrecg_muse_ecg1.xml"))  # warm up: imports are not timed
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
    args = ap.parse_args()

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
    worker.conn.send(None)
    wall = time.perf_counter() - t_start
    by_mutation: dict[str, dict[str, int]] = {}
    for key, v in by_kind.items():
        _, mutation, outcome = key.split(":")
        by_mutation.setdefault(mutation, {}).setdefault(outcome, 0)
        by_mutation[mutation][outcome] += v
    result = {"n": args.n, "code": str(args.code), "by_mutation": by_mutation, "seeds": len(pool), "counts": dict(counts), "by_kind": dict(sorted(by_kind.items())),
              "slowest_s": round(slowest[0], 3), "slowest": slowest[1], "wall_s": round(wall, 1),
              "timeout_s": args.timeout, "mem_gb": args.mem_gb, "cases": cases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("cases", "by_kind")}, indent=2))


if __name__ == "__main__":
    main()
