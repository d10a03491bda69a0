"""Word-level bit operations on packed planes for BitPruner: essential-bit budgets and lock-step group caps.

Every function takes the plane words of a sign-magnitude integer tensor (``Planes.words``: uint64
[n_groups, nbits], bit g of ``words[n, s]`` = bit s of the magnitude of value g of group n) and returns new
words. All work is done with whole-word operations vectorised over groups (AND/OR/XOR, ``np.bitwise_count``),
never value by value:

- a *thermometer* ``seen[:, j]`` = the lanes (values) of a group that have at least j essential bits so far is
  updated plane by plane, MSB first, with one AND/OR per level -- that is how "keep the k most significant
  essential bits" becomes ``plane & ~seen[k]``;
- rounding to the nearest k-term value adds, in bit-sliced form, 2^p to the lanes whose first dropped bit is
  set (p = the lowest kept significance): a ripple-carry adder across planes, 64 lanes per word operation;
- group caps pick lanes by class masks (lanes with exactly j essential bits) and take the lowest set bits of a
  word with ``x & -x``.

These are the reconstruction choices of methods.md section 5.2 [I]; BitPruner's paper publishes only its
abstract.
"""
from __future__ import annotations

import numpy as np

U64 = np.uint64
ALL = U64(0xFFFFFFFFFFFFFFFF)
ZERO = U64(0)


def thermometer(words: np.ndarray, levels: int | None = None) -> np.ndarray:
    """uint64 [n_groups, levels + 1]: ``seen[:, j]`` = lanes with at least j essential bits (j >= 1);
    ``seen[:, 0]`` = all ones. ``levels`` defaults to nbits (every possible count)."""
    words = np.asarray(words, dtype=U64)
    n, nbits = words.shape
    levels = nbits if levels is None else int(levels)
    seen = np.zeros((n, levels + 1), dtype=U64)
    seen[:, 0] = ALL
    for s in range(nbits):
        w = words[:, s]
        # a lane with >= j-1 bits and a bit here now has >= j bits; go down so each level uses the old one below
        for j in range(levels, 0, -1):
            seen[:, j] |= seen[:, j - 1] & w
    return seen


def keep_top_k(words: np.ndarray, k, rounding: bool = False) -> np.ndarray:
    """Keep at most ``k`` essential bits of every value, the most significant ones.

    ``k`` is an int or an int array [n_groups] (a per-group cap). With ``rounding`` the result is the nearest
    value with at most k essential bits (ties up); where that would overflow the top plane it stays truncated.
    Truncation gives the largest k-term value <= m; the smallest k-term value >= m is that plus 2^p, p being the
    lowest kept significance, so rounding up is exactly "the first dropped bit (p - 1) is set".
    """
    words = np.asarray(words, dtype=U64)
    n, nbits = words.shape
    k = np.broadcast_to(np.asarray(k, dtype=np.int64), (n,))
    if k.size and k.min() < 0:
        raise ValueError("bit budget must be >= 0")
    kmax = int(min(k.max(initial=0), nbits))
    kk = np.minimum(k, nbits)
    rows = np.arange(n)
    seen = np.zeros((n, kmax + 1), dtype=U64)
    seen[:, 0] = ALL
    kept = np.zeros_like(words)
    addend = np.zeros_like(words)
    full = seen[rows, kk]  # lanes that already hold their k bits (all lanes where k == 0)
    for s in range(nbits - 1, -1, -1):
        keep = words[:, s] & ~full
        kept[:, s] = keep
        for j in range(kmax, 0, -1):
            seen[:, j] |= seen[:, j - 1] & keep
        new_full = seen[rows, kk]
        if rounding and s > 0:
            # lanes whose k-th bit is at s: round up where the first dropped bit (s-1) is set
            addend[:, s] = (new_full & ~full) & words[:, s - 1] & (k > 0).astype(U64) * ALL
        full = new_full
    if not rounding:
        return kept
    out = np.empty_like(words)
    carry = np.zeros(n, dtype=U64)
    for s in range(nbits):  # bit-sliced ripple-carry add, 64 lanes per operation
        a, b = kept[:, s], addend[:, s]
        out[:, s] = a ^ b ^ carry
        carry = (a & b) | (carry & (a ^ b))
    overflow = carry  # lanes that would leave the magnitude range keep the truncated value
    return (out & ~overflow[:, None]) | (kept & overflow[:, None])


# ---- lock-step group caps (load balance) -------------------------------------------------------------------
def _l1(words: np.ndarray) -> np.ndarray:
    """float [n_groups]: sum of the magnitudes of each group (sum over planes of 2^s x ones)."""
    return (np.bitwise_count(words).astype(np.float64) * 2.0 ** np.arange(words.shape[1])).sum(axis=1)


def auto_weight_cap(words: np.ndarray, drop: float) -> np.ndarray:
    """Per group, the smallest cap c on any lane's essential bits whose removed bits are worth at most ``drop``
    of the group's magnitude sum (Pragmatic-style: the heaviest lane sets the group's time).

    One MSB-first sweep evaluates every cap at once: a bit at s is removed by cap c when its lane already holds
    c bits above s, i.e. ``plane & seen[c]``. Only the levels some lane has reached are swept (``hi``): after a
    budget k that is k + 1 columns, not nbits + 1 (the hot loop of a BitPruner training step)."""
    words = np.asarray(words, dtype=U64)
    n, nbits = words.shape
    seen = np.zeros((n, nbits + 1), dtype=U64)
    seen[:, 0] = ALL
    removed = np.zeros((n, nbits + 1))
    hi = 0  # highest count of bits any lane holds so far; seen[:, j > hi] are all zero
    for s in range(nbits - 1, -1, -1):
        w = words[:, s]
        removed[:, :hi + 1] += np.bitwise_count(seen[:, :hi + 1] & w[:, None]) * 2.0 ** s
        for j in range(min(hi + 1, nbits), 0, -1):
            seen[:, j] |= seen[:, j - 1] & w
        hi += bool(hi < nbits and seen[:, hi + 1].any())
    return (removed <= drop * _l1(words)[:, None]).argmax(axis=1).astype(np.int64)


def cap_weights(words: np.ndarray, cap) -> np.ndarray:
    """No lane of a group keeps more than ``cap`` essential bits (int or [n_groups]); only lanes above the cap
    lose bits, their least significant ones."""
    return keep_top_k(words, cap, rounding=False)


def auto_plane_cap(words: np.ndarray, drop: float) -> np.ndarray:
    """Per group, the smallest cap D on the ones of any plane whose removed bits are worth at most ``drop`` of the
    group's magnitude sum (Bitlet-style: the densest plane sets the group's time)."""
    words = np.asarray(words, dtype=U64)
    ones = np.bitwise_count(words).astype(np.int64)  # [n, nbits]
    d = np.arange(65)
    removed = (np.maximum(ones[:, None, :] - d[None, :, None], 0) * 2.0 ** np.arange(ones.shape[1])).sum(axis=2)
    return (removed <= drop * _l1(words)[:, None]).argmax(axis=1).astype(np.int64)


def _lowest_bits(x: np.ndarray, count: np.ndarray) -> np.ndarray:
    """uint64 [n]: the ``count`` lowest set bits of every word (all of them where count >= popcount)."""
    sel = np.zeros_like(x)
    x = x.copy()
    for t in range(int(count.max(initial=0))):
        low = x & (~x + U64(1))  # lowest set bit
        take = (count > t).astype(U64) * ALL
        sel |= low & take
        x ^= low & take
    return sel


def cap_planes(words: np.ndarray, cap) -> np.ndarray:
    """No plane of a group keeps more than ``cap`` ones (int or [n_groups]). In an over-full plane the bits of
    the heaviest lanes (most essential bits at that moment) go first, lower lane index first among equals.
    Planes are processed LSB first, so a lane that lost a bit counts as lighter for the planes above."""
    w = np.array(words, dtype=U64, copy=True)
    n, nbits = w.shape
    cap = np.broadcast_to(np.asarray(cap, dtype=np.int64), (n,))
    seen = thermometer(w)
    cls = seen[:, :-1] & ~seen[:, 1:]  # [n, nbits]: cls[:, j] = lanes with exactly j bits (j = 0..nbits-1)
    cls = np.concatenate([cls, seen[:, -1:]], axis=1)  # j = nbits: lanes with every bit
    for s in range(nbits):
        excess = np.bitwise_count(w[:, s]).astype(np.int64) - cap
        if excess.max(initial=0) <= 0:
            continue
        need = np.maximum(excess, 0)
        for j in range(nbits, 0, -1):
            if need.max(initial=0) <= 0:
                break
            cand = w[:, s] & cls[:, j]
            take = np.minimum(need, np.bitwise_count(cand).astype(np.int64))
            sel = _lowest_bits(cand, take)
            w[:, s] &= ~sel
            cls[:, j] &= ~sel  # those lanes are one bit lighter now
            cls[:, j - 1] |= sel
            need -= take
    return w


def auto_column_cap(words: np.ndarray, drop: float) -> np.ndarray:
    """Per group, the smallest number C of non-zero planes such that clearing the others, least contribution
    (2^s x ones) first, removes at most ``drop`` of the group's magnitude sum (BitWave-style: time = non-zero
    planes)."""
    words = np.asarray(words, dtype=U64)
    ones = np.bitwise_count(words).astype(np.int64)
    n, nbits = ones.shape
    contrib = ones * 2.0 ** np.arange(nbits)
    srt = np.sort(np.where(ones > 0, contrib, np.inf), axis=1)  # least contribution first, empty planes last
    srt[~np.isfinite(srt)] = 0.0
    nz = (ones > 0).sum(axis=1)
    removed_first = np.concatenate([np.zeros((n, 1)), np.cumsum(srt, axis=1)], axis=1)  # remove r planes
    r = np.maximum(nz[:, None] - np.arange(nbits + 1)[None, :], 0)  # planes to remove for cap c
    removed = np.take_along_axis(removed_first, r, axis=1)
    return (removed <= drop * _l1(words)[:, None]).argmax(axis=1).astype(np.int64)


def cap_columns(words: np.ndarray, cap) -> np.ndarray:
    """No group keeps more than ``cap`` non-zero planes (int or [n_groups]); the planes with the least
    contribution (2^s x ones; lower significance first among equals) are cleared."""
    w = np.array(words, dtype=U64, copy=True)
    n, nbits = w.shape
    cap = np.broadcast_to(np.asarray(cap, dtype=np.int64), (n,))
    ones = np.bitwise_count(w).astype(np.int64)
    score = np.where(ones > 0, ones * (2.0 ** np.arange(nbits)), np.inf)
    rank = np.argsort(np.argsort(-score, axis=1, kind="stable"), axis=1, kind="stable")  # 0 = most important
    w[rank >= cap[:, None]] = ZERO
    return w


STYLES = ("weight", "plane", "column", "none")
AUTO_CAP = {"weight": auto_weight_cap, "plane": auto_plane_cap, "column": auto_column_cap}
APPLY_CAP = {"weight": cap_weights, "plane": cap_planes, "column": cap_columns}


def balance(words: np.ndarray, style: str, drop: float = 0.05, cap: int | None = None) -> np.ndarray:
    """Cap every group for lock-step lanes: ``style`` 'weight' (heaviest lane; Pragmatic, Laconic), 'plane'
    (densest plane; Bitlet), 'column' (non-zero planes; BitWave) or 'none'. ``cap`` fixes the cap for every
    group; otherwise each group gets the tightest cap whose removed bits are worth at most ``drop`` of the
    group's magnitude sum (L1), so the cap costs little value."""
    if style == "none":
        return np.asarray(words, dtype=U64)
    if style not in AUTO_CAP:
        raise ValueError(f"unknown balance style {style!r} ({', '.join(STYLES)})")
    c = AUTO_CAP[style](words, drop) if cap is None else cap
    return APPLY_CAP[style](words, c)
