"""Patient and record ids: the secret salt, salted patient hashes, id cleaning."""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import stat
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


MAX_SALT_BYTES = 4096  # a salt is 32 hex characters; a bigger "salt file" is something else


class SaltFileError(StoreError):
    """The salt file is not a private regular file of this user (mode 0600) holding one line of text."""


def _read_salt_file(p: Path) -> str:
    """The text of the salt file ``p``, refused unless it is a regular file (a symlink to one is followed, a
    dangling one is refused) owned by this user, readable by nobody else (mode 0600 / 0400), at most
    :data:`MAX_SALT_BYTES` bytes: opened non-blocking (a FIFO never hangs), checked on the open descriptor."""
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        why = "is a dangling symlink" if p.is_symlink() else "does not exist"
        raise SaltFileError(f"salt file {p} {why}") from None
    except OSError as e:
        raise SaltFileError(f"salt file {p}: cannot open ({e.strerror or e})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO, device or socket)"
        raise SaltFileError(f"salt file {p} is {kind}")
    with os.fdopen(fd, "rb") as f:
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise SaltFileError(f"salt file {p} is owned by uid {st.st_uid}, not by this user ({os.getuid()})")
        if st.st_mode & 0o077:
            raise SaltFileError(f"salt file {p} has mode {stat.S_IMODE(st.st_mode):04o}: others may read it; "
                                f"make it private with chmod 600 {p}")
        if st.st_size > MAX_SALT_BYTES:
            raise SaltFileError(f"salt file {p} holds {st.st_size} bytes, over {MAX_SALT_BYTES}: not a salt")
        data = f.read(MAX_SALT_BYTES + 1)
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SaltFileError(f"salt file {p} is not text") from None
    if "\n" in text or "\0" in text:
        raise SaltFileError(f"salt file {p} holds more than one line")
    return text


def _read_salt(p: Path, wait: bool = False) -> str:
    """The salt in ``p``; with ``wait``, give a concurrent creator up to 5 s to finish writing it."""
    for _ in range(100 if wait else 1):
        salt = _read_salt_file(p)
        if salt:
            return salt
        time.sleep(0.05)
    raise SaltFileError(f"salt file {p} is empty")


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
        if p.is_symlink():
            raise SaltFileError(f"salt file {p} is a dangling symlink")
        raise SaltFileError(f"salt_file {p} does not exist")
    if p.exists() or p.is_symlink():
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
