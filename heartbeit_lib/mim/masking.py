"""BEiT block-wise masking of the patch grid, with an exact masked count.

BEiT (Bao et al. 2022, section 2.5 and Algorithm 1) masks about 40% of the 14 x 14 patch grid
(75 of 196 patches) as a union of rectangular blocks: repeatedly draw a block area
``s ~ U(min_block, remaining)``, an aspect ratio ``r ~ logU(0.3, 1/0.3)``, a block of
``round(sqrt(s r)) x round(sqrt(s / r))`` patches at a uniform position, and keep it when it adds
new patches without overshooting the budget.  That loop gives up after ten rejected draws, so its
masks often hold fewer patches than requested (66-75 of 75 in a simulation of the public
``MaskingGenerator``).  :func:`block_mask` runs the same loop and then *grows* the mask to the exact
count by adding unmasked neighbours of masked patches, preferring the ones with the most masked
neighbours, so the extra patches extend existing blocks instead of adding isolated holes.

Two implementations of that one process:

- :func:`block_mask` - one mask per call, BEiT's loop in Python: 39 CPU ms per batch of 128 14 x 14 masks, as
  much as reading and rendering the batch at 224 px (43 ms; ``benchmarks/bench_pretrain.py --masks-only``).  It
  keeps BEiT's random stream (tested against it).
- :func:`block_masks_batched` - one mask per generator, all advanced together: each round draws one block for
  every unfinished mask with array operations, then the grow step adds one patch to every short mask at once
  (10 CPU ms per batch of 128).  The data path (``mim.data.MIMDataset``) uses it.  Each mask reads only its own
  generator, so a mask does not depend on the other items of its batch (the batch split over processes and
  loader workers).  The numbers are drawn in a different order than :func:`block_mask` draws them, so the masks
  differ draw by draw but follow the same distribution (``tests/mim/test_masking.py`` compares per-position
  frequency, counts and block statistics).

All randomness comes from the ``np.random.Generator`` objects passed in (BEiT's generator used the global
``random`` module).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["MaskingError", "block_mask", "block_masks", "block_masks_batched", "num_masked_for"]

_CHUNK = 32  # block draws taken from each generator at a time (most masks finish within 32 rounds)


class MaskingError(ValueError):
    """Invalid masking parameters (the message names the parameter and the reason)."""


def _check(grid: tuple[int, int], num_masked: int, min_block: int, aspect: tuple[float, float],
           max_block: int | None) -> tuple[int, int]:
    try:
        h, w = (int(grid[0]), int(grid[1]))
    except (TypeError, IndexError, ValueError) as e:
        raise MaskingError(f"grid must be a pair (rows, cols) of patch counts, got {grid!r}") from e
    if h < 1 or w < 1:
        raise MaskingError(f"grid must have positive sides, got {grid!r}")
    if not 0 <= num_masked <= h * w:
        raise MaskingError(f"num_masked must lie in [0, {h * w}] for a {h}x{w} grid, got {num_masked}")
    if min_block < 1:
        raise MaskingError(f"min_block must be >= 1 patch, got {min_block}")
    if max_block is not None and max_block < 1:
        raise MaskingError(f"max_block must be >= 1 patch or None, got {max_block}")
    lo, hi = aspect
    if not (0 < lo <= hi):
        raise MaskingError(f"aspect must be (low, high) with 0 < low <= high, got {aspect!r}")
    return h, w


def _beit_blocks(rng: np.random.Generator, mask: np.ndarray, budget: int, min_block: int,
                 max_block: int, log_aspect: tuple[float, float], attempts: int) -> int:
    """BEiT's ``MaskingGenerator._mask``: try ``attempts`` blocks, stop at the first that adds patches.

    Returns the number of newly masked patches (0 when every attempt was rejected).
    """
    h, w = mask.shape
    cap = min(budget, max_block)
    for _ in range(attempts):
        # random.uniform(a, b) as in BEiT, which also allows b < a (then a draw in [b, a])
        area = min_block + (cap - min_block) * rng.random()
        ratio = math.exp(rng.uniform(*log_aspect))
        bh = int(round(math.sqrt(area * ratio)))
        bw = int(round(math.sqrt(area / ratio)))
        if bh < h and bw < w:  # strict, as BEiT: a block never spans the whole grid side
            top = int(rng.integers(0, h - bh + 1))
            left = int(rng.integers(0, w - bw + 1))
            window = mask[top:top + bh, left:left + bw]
            new = bh * bw - int(window.sum())
            if 0 < new <= cap:
                window[...] = True
                return new
    return 0


def _grow(rng: np.random.Generator, mask: np.ndarray, n_add: int) -> None:
    """Add ``n_add`` patches to ``mask`` in place, each a 4-neighbour of the masked region.

    Among the unmasked candidates, those with the most masked 4-neighbours are preferred (ties
    broken by ``rng``), which fills notches and extends block edges.  An empty mask starts from a
    uniformly drawn seed patch.
    """
    h, w = mask.shape
    for _ in range(n_add):
        if not mask.any():
            k = int(rng.integers(h * w))
            mask[k // w, k % w] = True
            continue
        m = mask.astype(np.int8)
        nb = np.zeros((h, w), np.int8)
        nb[1:, :] += m[:-1, :]
        nb[:-1, :] += m[1:, :]
        nb[:, 1:] += m[:, :-1]
        nb[:, :-1] += m[:, 1:]
        nb[mask] = 0
        best = nb.max()
        if best == 0:  # cannot happen on a connected grid with a partial mask; keep it safe
            cand = np.flatnonzero(~mask)
        else:
            cand = np.flatnonzero(nb == best)
        k = int(cand[rng.integers(len(cand))])
        mask[k // w, k % w] = True


def block_mask(rng: np.random.Generator, grid: tuple[int, int] = (14, 14), num_masked: int = 75,
               min_block: int = 16, aspect: tuple[float, float] = (0.3, 1 / 0.3),
               max_block: int | None = None, attempts: int = 10) -> np.ndarray:
    """One BEiT block-wise mask with exactly ``num_masked`` masked patches.

    Parameters
    ----------
    rng : np.random.Generator
        Source of all randomness (seed it for reproducible masks).
    grid : (rows, cols)
        Patch grid, e.g. (14, 14) for 224 x 224 images with 16 x 16 patches.
    num_masked : int
        Exact number of masked patches (BEiT: 75 of 196, about 40%).
    min_block : int
        Minimum block area in patches (BEiT: 16).
    aspect : (low, high)
        Block aspect-ratio range, drawn log-uniformly (BEiT: 0.3 .. 1/0.3).
    max_block : int or None
        Maximum block area in patches (BEiT: ``num_masked``).
    attempts : int
        Rejected block draws after which BEiT's loop stops (BEiT: 10).

    Returns
    -------
    np.ndarray
        bool (rows, cols), True = masked; ``mask.sum() == num_masked`` always.
    """
    h, w = _check(grid, num_masked, min_block, aspect, max_block)
    max_block = num_masked if max_block is None else max_block
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    mask = np.zeros((h, w), dtype=bool)
    count = 0
    while count < num_masked:
        delta = _beit_blocks(rng, mask, num_masked - count, min_block, max_block, log_aspect, attempts)
        if delta == 0:
            break
        count += delta
    if count < num_masked:
        _grow(rng, mask, num_masked - count)
    return mask


def block_masks(rng: np.random.Generator, n: int, grid: tuple[int, int] = (14, 14), num_masked: int = 75,
                **kw) -> np.ndarray:
    """``n`` independent masks, bool (n, rows, cols): :func:`block_masks_batched` on ``rng.spawn(n)``."""
    if n < 0:
        raise MaskingError(f"n must be >= 0 masks, got {n}")
    return block_masks_batched(rng.spawn(n), grid, num_masked, **kw)


def block_masks_batched(rngs: Sequence[np.random.Generator], grid: tuple[int, int] = (14, 14),
                        num_masked: int = 75, min_block: int = 16, aspect: tuple[float, float] = (0.3, 1 / 0.3),
                        max_block: int | None = None, attempts: int = 10) -> np.ndarray:
    """One block mask per generator, computed together: bool (len(rngs), rows, cols), True = masked.

    The same process as :func:`block_mask` (parameters as there), with array operations over the batch:
    each round every unfinished mask draws one block (4 uniforms from its own generator: area, aspect, top,
    left) and keeps it under BEiT's rule; a mask is finished at ``num_masked`` patches or after ``attempts``
    rejected blocks in a row.  Then every short mask gains one 4-neighbour patch per step (most masked
    neighbours first, ties uniform), as :func:`block_mask` grows.  Mask ``i`` depends on ``rngs[i]`` alone.
    Every mask has exactly ``num_masked`` patches.
    """
    h, w = _check(grid, num_masked, min_block, aspect, max_block)
    n = len(rngs)
    max_block = num_masked if max_block is None else max_block
    lo, hi = math.log(aspect[0]), math.log(aspect[1])
    rows, cols = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    mask = np.zeros((n, h, w), dtype=bool)
    count = np.zeros(n, np.int64)
    fails = np.zeros(n, np.int64)
    active = np.full(n, num_masked > 0 and attempts > 0)  # (n,) masks still drawing blocks
    draws = np.empty((n, _CHUNK, 4))
    r = 0
    while active.any():
        if r % _CHUNK == 0:  # a mask active now reads its next chunk; finished ones stop reading
            for i in np.flatnonzero(active):
                draws[i] = rngs[i].random((_CHUNK, 4))
        idx = np.flatnonzero(active)
        u = draws[idx, r % _CHUNK]  # (a, 4)
        r += 1
        cap = np.minimum(num_masked - count[idx], max_block)
        area = min_block + (cap - min_block) * u[:, 0]  # random.uniform(min_block, cap), as BEiT
        ratio = np.exp(lo + (hi - lo) * u[:, 1])
        bh = np.rint(np.sqrt(area * ratio)).astype(np.int64)  # rint = round(): half to even
        bw = np.rint(np.sqrt(area / ratio)).astype(np.int64)
        top = np.floor(u[:, 2] * (h - bh + 1)).astype(np.int64)[:, None, None]  # uniform in [0, h - bh]
        left = np.floor(u[:, 3] * (w - bw + 1)).astype(np.int64)[:, None, None]
        rect = ((rows >= top) & (rows < top + bh[:, None, None])
                & (cols >= left) & (cols < left + bw[:, None, None]))  # (a, h, w)
        new = (rect & ~mask[idx]).sum(axis=(1, 2))
        ok = (bh < h) & (bw < w) & (new > 0) & (new <= cap)  # BEiT: never a whole side, never past the budget
        mask[idx[ok]] |= rect[ok]
        count[idx] += np.where(ok, new, 0)
        fails[idx] = np.where(ok, 0, fails[idx] + 1)
        active[idx] = (count[idx] < num_masked) & (fails[idx] < attempts)
    _grow_batched(rngs, mask, num_masked - count)
    return mask


def _grow_batched(rngs: Sequence[np.random.Generator], mask: np.ndarray, n_add: np.ndarray) -> None:
    """:func:`_grow` on bool (n, h, w) ``mask`` in place, ``n_add[i]`` patches for mask ``i``.

    The tie-break among the best candidates is the largest of a uniform draw per cell (``rngs[i]``), a
    uniform choice among them; an empty mask has every cell as a candidate (a uniform seed patch).
    """
    n, h, w = mask.shape
    need = np.flatnonzero(n_add > 0)
    if not len(need):
        return
    steps = int(n_add.max())
    u = np.zeros((len(need), steps, h * w))
    for k, i in enumerate(need):
        u[k, :n_add[i]] = rngs[i].random((n_add[i], h * w))
    for s in range(steps):
        sel = np.flatnonzero(n_add[need] > s)
        m = mask[need[sel]]
        nb = np.zeros(m.shape, np.int8)
        nb[:, 1:, :] += m[:, :-1, :]
        nb[:, :-1, :] += m[:, 1:, :]
        nb[:, :, 1:] += m[:, :, :-1]
        nb[:, :, :-1] += m[:, :, 1:]
        nb[m] = -1
        best = nb.reshape(len(sel), -1).max(axis=1)
        cand = nb.reshape(len(sel), -1) == best[:, None]
        pick = np.where(cand, u[sel, s], -1.0).argmax(axis=1)
        mask[need[sel], pick // w, pick % w] = True


def num_masked_for(grid: tuple[int, int], ratio: float = 75 / 196) -> int:
    """Masked-patch count for a grid at BEiT's ratio (75 of 196 by default), at least 1."""
    if not 0 < ratio < 1:
        raise MaskingError(f"ratio must lie in (0, 1), got {ratio}")
    return max(1, int(round(ratio * grid[0] * grid[1])))
