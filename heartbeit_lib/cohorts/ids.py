"""Patient and record ids: the secret salt, salted patient hashes, id cleaning."""

from __future__ import annotations

import hashlib
import math
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreError


def read_or_create_salt(run_dir: str | os.PathLike, salt_file: str | os.PathLike | None = None) -> str:
    """The salt for patient hashes: from ``salt_file`` if given, else ``<run_dir>/salt.txt``,
    created with 128 random bits on first use (so a resumed build reuses it)."""
    if salt_file:
        p = Path(salt_file)
        if not p.exists():
            raise StoreError(f"salt_file {p} does not exist")
        salt = p.read_text().strip()
        if not salt:
            raise StoreError(f"salt_file {p} is empty")
        return salt
    p = Path(run_dir) / "salt.txt"
    if p.exists():
        return p.read_text().strip()
    p.parent.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_hex(16)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(salt + "\n")
    os.replace(tmp, p)
    return salt


def hash_patient(patient_id: Any, salt: str) -> str:
    """``sha256(salt + '\\0' + str(patient_id))`` as 64 hex characters."""
    return hashlib.sha256(f"{salt}\0{patient_id}".encode()).hexdigest()


def clean_id(v: Any) -> str:
    """Patient/record ids as strings; ``15709.0`` (PTB-XL stores ids as floats) -> ``'15709'``."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, (np.integer,)):
        return str(int(v))
    s = str(v).strip()
    return "" if s.lower() in ("nan", "none") else s
