"""The Bitlet emulated forward pass: every conv2d/linear whose weight is a module parameter runs through the
kernels of ``bitsieve.methods.bitlet`` (its docstring says what is computed and how exactly). Kept apart so
that listing methods does not import torch."""
from __future__ import annotations

import contextlib
import weakref

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..accel.bitlet_pe import ALL_CHANNELS
from ..errors import UserError
from .bitlet import (GROUPINGS, METHOD, _bitlet_depthwise, _matmul, _single_pair_depthwise, effective_prune,
                     kernel_words, prune_runs, split_weights, use_columns)


def _groups(taps: int, chans: int, group: int, grouping: str) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of the PE groups along a channel-last (tap, channel) axis of taps * chans."""
    if grouping == "flat":
        starts = np.arange(0, taps * chans, group)
        return starts, np.minimum(group, taps * chans - starts)
    j = np.arange(0, chans, group)
    starts = (np.arange(taps)[:, None] * chans + j[None, :]).reshape(-1)
    return starts, np.tile(np.minimum(group, chans - j), taps)


def _drop(emulator_ref, key) -> None:
    """Finaliser of a cached weight tensor: forget its entry (if the emulator still exists)."""
    em = emulator_ref()
    if em is not None:
        em._cache.pop(key, None)


class Emulator:
    """Runs conv2d/linear calls through the Bitlet numerics (see the module docstring).

    ``prune``, ``strict_ieee``, ``group`` (<= 64 pairs) and ``grouping`` as in the method's parameters.
    Weight decompositions are cached per weight tensor (and its in-place version). An entry lives exactly as
    long as its tensor: it is dropped when the tensor is freed (so a later tensor that gets the same ``id``
    never finds it) and a hit is checked to be the very tensor it was made from."""

    def __init__(self, prune: int = ALL_CHANNELS, strict_ieee: bool = False, group: int = 64,
                 grouping: str = "tap"):
        if not 1 <= int(prune) <= ALL_CHANNELS:
            raise UserError(f"bitlet: prune must be a non-zero 24-bit mask, got {prune:#x}")
        if not 1 <= int(group) <= 64:
            raise UserError(f"bitlet: group must be 1..64, got {group}")
        if grouping not in GROUPINGS:
            raise UserError(f"bitlet: grouping must be one of {', '.join(GROUPINGS)}")
        self.prune, self.strict, self.group, self.grouping = int(prune), bool(strict_ieee), int(group), grouping
        self.runs = prune_runs(self.prune)
        self._cache: dict = {}
        self.pairs = 0  # multiply-accumulates emulated so far

    def _weights(self, w: torch.Tensor, key: str, make):
        k = (id(w), w._version, key)
        hit = self._cache.get(k)
        if hit is not None and hit[0]() is w:
            return hit[1]
        value = make(w.detach().float().cpu().numpy())
        self._cache[k] = (weakref.ref(w), value)
        weakref.finalize(w, _drop, weakref.ref(self), k)
        return value

    def linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        """Emulated F.linear: groups of ``group`` along the input features."""
        o, i = w.shape
        xs = _words(x).reshape(-1, i)
        gs, gl = _groups(1, i, self.group, "flat")
        out = self._matmul(xs.T, np.arange(i), w, "lin", lambda a: a, gs, gl, o).T
        if b is not None:
            out = out + b.detach().float().numpy()
        return torch.from_numpy(np.ascontiguousarray(out)).reshape(*x.shape[:-1], o)

    def _matmul(self, A, kmap, w, key, matrix, gs, gl, o) -> np.ndarray:
        """W @ A through the Bitlet numerics: A uint32 [R, P] activation words (row kmap[k] holds
        dot-product index k), W = matrix(weights of w) float32 [o, K]; returns float32 [o, P]."""
        self.pairs += A.shape[1] * len(kmap) * o
        columns = use_columns(o, gl)
        words = self._weights(w, f"{key}/{columns}", lambda a: kernel_words(matrix(a), columns))
        return _matmul(A, kmap, words, gs, gl, self.runs, self.strict, columns)

    def conv2d(self, x, w, b=None, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
        """Emulated F.conv2d: channel-last taps, decision 1 groups (im2col only where taps > 1); the
        batch and the output pixels form one axis of columns."""
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))  # noqa: E731
        stride, dilation = pair(stride), pair(dilation)
        o, cg, kh, kw = w.shape
        x = x.detach().float()
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            else:  # 'same' (stride 1): torch puts the odd extra pad on the right/bottom
                tot = [d * (k - 1) for d, k in zip(dilation, (kh, kw))]
                x = F.pad(x, (tot[1] // 2, tot[1] - tot[1] // 2, tot[0] // 2, tot[0] - tot[0] // 2))
                padding = (0, 0)
        padding = pair(padding)
        n, c, h, wd = x.shape
        ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        wo = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        taps, og = kh * kw, o // groups
        bias = np.zeros(0, np.float32) if b is None else np.ascontiguousarray(b.detach().float().numpy())
        by_taps = self.grouping == "auto" and taps > cg  # bitsieve.lanes 'auto': taps of each channel
        if cg == 1 and og == 1 and groups > 1:  # depthwise: straight from the input
            gs, gl = _groups(taps, 1, self.group, "flat" if by_taps else self.grouping)
            out = np.empty((n, c, ho, wo), np.float32)
            geo = (kw, stride[0], stride[1], dilation[0], dilation[1])
            self.pairs += c * taps * n * ho * wo
            if gl.max() == 1:  # one pair per group: a truncated product per tap, the padding in the kernel
                we, wm, wp = self._weights(w, "dw1", lambda a: _pruned_weights(a.reshape(o, taps), self.prune))
                xw = _words(x)
                _single_pair_depthwise(xw, xw.view(np.float32), we, wm, wp, *geo, *padding, self.prune, self.strict,
                                       bias, out)
            else:
                xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if any(padding) else x
                we, wf = self._weights(w, "dw", lambda a: split_weights(a.reshape(o, taps)))
                _bitlet_depthwise(_words(xp), we, wf, *geo, gs, gl, self.runs, self.strict, bias, out)
            return torch.from_numpy(out)
        # the dot-product axis is channel-last (tap, channel), or channel-major (channel, tap) when the groups
        # run along each channel's taps
        gs, gl = _groups(cg, taps, self.group, "tap") if by_taps else _groups(taps, cg, self.group, self.grouping)
        outs = []
        for gi in range(groups):
            xg = x[:, gi * cg:(gi + 1) * cg]
            if taps == 1 and padding == (0, 0):
                cols = _words(xg[:, :, ::stride[0], ::stride[1]]).reshape(n, cg, ho * wo)
                kmap = np.arange(cg)
            else:  # unfold rows are (channel, tap)
                cols = _words(F.unfold(xg, (kh, kw), dilation, padding, stride))
                kmap = np.arange(cg * taps) if by_taps else \
                    (np.arange(cg)[None, :] * taps + np.arange(taps)[:, None]).reshape(-1)
            A = np.ascontiguousarray(cols.transpose(1, 0, 2)).reshape(cols.shape[1], n * ho * wo)
            if by_taps:
                matrix = lambda a, gi=gi: a[gi * og:(gi + 1) * og].reshape(og, cg * taps)  # noqa: E731
            else:
                matrix = lambda a, gi=gi: a[gi * og:(gi + 1) * og].transpose(0, 2, 3, 1).reshape(og, taps * cg)  # noqa: E731
            key = f"conv{gi}/{'taps' if by_taps else 'lanes'}"
            outs.append(self._matmul(A, kmap, w, key, matrix, gs, gl, og).reshape(og, n, ho * wo))
        out = (np.concatenate(outs) if groups > 1 else outs[0]).transpose(1, 0, 2)
        if b is not None:  # the bias is added once, in fp32, after the group sums
            out = out + bias[None, :, None]
        return torch.from_numpy(np.ascontiguousarray(out)).reshape(n, o, ho, wo)


def _pruned_weights(w: np.ndarray, prune: int):
    """float32 weights [C, T] -> (We, significand int64, pruned value float64): what a 1-pair group
    multiplies (no alignment shift in a 1-pair group)."""
    u = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
    e = ((u >> 23) & 0xFF).astype(np.int64)
    f = (u & 0x7FFFFF).astype(np.int64)
    m = f | ((e != 0).astype(np.int64) << 23)
    e = np.where((e == 0) & (f != 0), 1, e)
    v = np.ldexp((m & prune).astype(np.float64), e - 150)
    return e, m, np.where(u >> 31, -v, v)


def _words(t: torch.Tensor) -> np.ndarray:
    """A float tensor's binary32 words as a contiguous uint32 array (no copy when already contiguous)."""
    return np.ascontiguousarray(t.detach().float().contiguous().numpy()).view(np.uint32)


_CONV = {torch.conv2d, F.conv2d}
_LINEAR = {F.linear, torch._C._nn.linear}


class _Mode(TorchFunctionMode):
    def __init__(self, emu: Emulator):
        super().__init__()
        self.emu = emu

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CONV and len(args) > 1 and isinstance(args[1], torch.nn.Parameter):
            return self.emu.conv2d(*args, **kwargs)
        if func in _LINEAR and len(args) > 1 and isinstance(args[1], torch.nn.Parameter):
            return self.emu.linear(*args, **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def emulate(params: dict | None = None, **kw):
    """``with emulate({"prune": 0xFF0000}): module(x)`` runs every conv2d/linear whose weight is a
    parameter through the Bitlet numerics. Yields the Emulator (its ``pairs`` counts the MACs)."""
    p = {**METHOD.defaults(), **(params or {}), **kw}
    emu = Emulator(effective_prune(p), p["strict_ieee"], p["group"], p["grouping"])
    with torch.no_grad(), _Mode(emu):
        yield emu
