"""Patient and record ids: the secret salt, salted patient hashes, id cleaning."""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreError


#: Environment variable naming the default salt file (overrides the per-user default below).
SALT_ENV = "HEARTBEIT_SALT_FILE"


def default_salt_path() -> Path:
    """The per-user salt file: ``$HEARTBEIT_SALT_FILE``, else ``$XDG_DATA_HOME/heartbeit/salt``, else
    ``~/.local/share/heartbeit/salt``. Kept outside every run folder: whoever holds the salt and a list
    of candidate ids can re-identify the patients (1.2 million candidates hash in about a second)."""
    if os.environ.get(SALT_ENV):
        return Path(os.environ[SALT_ENV]).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "heartbeit" / "salt"


def _create_salt_exclusively(p: Path) -> str:
    """Write 128 random bits to ``p`` created with ``O_EXCL`` (mode 0600); when another process
    created it first, read theirs instead. Never a shared temporary name."""
    p.parent.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_hex(16)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_salt(p, wait=True)
    with os.fdopen(fd, "w") as f:
        f.write(salt + "\n")
        f.flush()
        os.fsync(f.fileno())
    return salt


def _read_salt(p: Path, wait: bool = False) -> str:
    """The salt in ``p``; with ``wait``, give a concurrent creator up to 5 s to finish writing it."""
    for _ in range(100 if wait else 1):
        salt = p.read_text().strip()
        if salt:
            return salt
        time.sleep(0.05)
    raise StoreError(f"salt file {p} is empty")


def salt_path(run_dir: str | os.PathLike, salt_file: str | os.PathLike | None = None) -> Path:
    """Where the salt of a build lives: ``salt_file`` if given; else a legacy ``<run_dir>/salt.txt``
    when the run folder has one (a build made before the default moved, so resuming reuses it);
    else the per-user :func:`default_salt_path`."""
    if salt_file:
        return Path(salt_file)
    legacy = Path(run_dir) / "salt.txt"
    return legacy if legacy.exists() else default_salt_path()


def read_or_create_salt(run_dir: str | os.PathLike, salt_file: str | os.PathLike | None = None) -> str:
    """The salt for patient hashes, from :func:`salt_path`. A given ``salt_file`` must exist; the
    per-user default is created on first use with ``O_EXCL`` (128 random bits, mode 0600), so two
    concurrent builds agree on one salt. Record the path (:func:`salt_path`), never the salt."""
    p = salt_path(run_dir, salt_file)
    if salt_file and not p.exists():
        raise StoreError(f"salt_file {p} does not exist")
    if p.exists():
        return _read_salt(p, wait=not salt_file)
    return _create_salt_exclusively(p)


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
