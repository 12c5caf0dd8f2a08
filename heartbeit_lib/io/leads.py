"""Lead names and limb-lead algebra, shared by the readers (:mod:`heartbeit_lib.io`) and
:mod:`heartbeit_lib.signals` (which re-exports them). One canonicaliser, one derivation.

Its errors are the base of :mod:`heartbeit_lib.signals`' error hierarchy (``SignalError``), so
``signals`` raises and catches the same classes.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple, Sequence

import numpy as np

#: Canonical lead names, in the order every :class:`~heartbeit_lib.io.ECGRecord` uses.
CANONICAL_LEADS: tuple[str, ...] = (
    "I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6",
)
LEAD_ORDER = {name: i for i, name in enumerate(CANONICAL_LEADS)}
DERIVABLE_LEADS = ("III", "AVR", "AVL", "AVF")
# Other spellings seen in the wild (Italian/French D1-D3 for the Einthoven leads).
_LEAD_ALIASES = {"D1": "I", "D2": "II", "D3": "III", "DI": "I", "DII": "II", "DIII": "III"}


class SignalError(ValueError):
    """Base class of every preprocessing error; the message names the parameter and reason."""


class SignalShapeError(SignalError):
    """``x`` has the wrong number of dimensions or a shape that does not match ``leads``."""


class LeadError(SignalError):
    """Lead names are malformed, duplicated or a requested lead is missing."""


def canonical_lead(name: Any) -> str | None:
    """Canonical upper-case lead name (``'aVR'``, ``'avr'``, ``'Lead II'``, ``'v1'`` -> ``AVR``, ``II``,
    ``V1``), or None for a channel that is not one of the 12 standard leads (``'MLII'``, ``'Resp'``)."""
    s = re.sub(r"[\s_]+", "", str(name)).upper()
    if s.startswith("LEAD") and len(s) > 4:
        s = s[4:]
    if s in LEAD_ORDER:
        return s
    return _LEAD_ALIASES.get(s)


def canonical_lead_name(name: str) -> str:
    """Strict form of :func:`canonical_lead` for lead selection: ``"aVR" -> "AVR"``, ``" v1 " -> "V1"``;
    a name that is not a standard lead is kept upper-cased (``"x" -> "X"``) so a selection can
    report it as missing. A non-string or empty name raises :class:`LeadError`."""
    if not isinstance(name, str) or not name.strip():
        raise LeadError(f"leads: lead name {name!r} is not a non-empty string")
    return canonical_lead(name) or name.strip().upper()


class LimbLeads(NamedTuple):
    """Derived limb leads, each shaped like the inputs (microvolts)."""

    III: np.ndarray
    AVR: np.ndarray
    AVL: np.ndarray
    AVF: np.ndarray


def derive_limb_leads(lead_i: np.ndarray, lead_ii: np.ndarray) -> LimbLeads:
    """Derive III, aVR, aVL, aVF from leads I and II (Einthoven / Goldberger identities).

    Parameters
    ----------
    lead_i, lead_ii : array_like, same shape (any, e.g. (samples,) or (N, samples))
        Leads I and II in microvolts.

    Returns
    -------
    LimbLeads
        ``(III, AVR, AVL, AVF)`` with ``III = II - I``, ``aVR = -(I + II) / 2``,
        ``aVL = I - II / 2``, ``aVF = II - I / 2``; float64 unless the inputs are float32.
    """
    i = np.asarray(lead_i)
    ii = np.asarray(lead_ii)
    if i.shape != ii.shape:
        raise SignalShapeError(f"derive_limb_leads: lead_i shape {i.shape} != lead_ii shape {ii.shape}")
    if not (np.issubdtype(i.dtype, np.floating) and i.dtype == ii.dtype):
        i, ii = i.astype(np.float64), ii.astype(np.float64)
    return LimbLeads(III=ii - i, AVR=-(i + ii) / 2, AVL=i - ii / 2, AVF=ii - i / 2)


def append_limb_leads(signal: np.ndarray, leads: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...], list[str]]:
    """Append the limb leads III, aVR, aVL, aVF that are missing, computed by :func:`derive_limb_leads`.

    Parameters
    ----------
    signal : (L, T) array in any amplitude unit.
    leads : L canonical names; must contain I and II.

    Returns
    -------
    signal : (L + k, T) float64, leads : tuple of names, derived : list of the k names added.
    """
    leads = tuple(leads)
    x = np.asarray(signal, dtype=np.float64)
    derived = [n for n in DERIVABLE_LEADS if n not in leads]
    if not derived:
        return x, leads, []
    limb = derive_limb_leads(x[leads.index("I")], x[leads.index("II")])
    extra = np.stack([getattr(limb, n) for n in derived])
    return np.concatenate([x, extra]), leads + tuple(derived), derived
