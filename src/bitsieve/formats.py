"""Number formats: how a tensor splits into sign, exponent and significand/magnitude bits, and back, exactly.

Every format maps values to raw bit patterns (uint32) and back. The planes core then reads a pattern as
(sign, exponent, significand) with `fields`, so one packing kernel serves floats and integers alike.

Format names: ``fp32``, ``fp16``, ``bf16``; ``int<b>`` (sign-magnitude, the bit-serial default of
methods.md decision 2), ``int<b>tc`` (two's complement, for BBS/BitVert/Bitlet activations), 2 <= b <= 32;
``q<m>.<n>`` fixed point with m integer and n fraction bits plus a sign (width m+n+1, sign-magnitude;
``q<m>.<n>tc`` for two's complement).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import UserError

FLOAT_LAYOUT = {"fp32": (8, 23), "fp16": (5, 10), "bf16": (8, 7)}  # (exponent bits, fraction bits)


@dataclass(frozen=True)
class Format:
    """A number format. ``kind`` is 'float' or 'int'; fixed point is an int with ``frac`` fraction bits."""

    name: str
    kind: str
    width: int  # total bits of a stored value
    exp_bits: int = 0  # float only
    frac: int = 0  # float: fraction (mantissa) bits; fixed point: fraction bits of the scale 2^-frac
    twos: bool = False  # int: two's complement (else sign-magnitude)

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def nbits(self) -> int:
        """Significance planes per value: float significand with hidden bit, int magnitude (or all bits, tc)."""
        if self.is_float:
            return self.frac + 1
        return self.width if self.twos else self.width - 1

    @property
    def bias(self) -> int:
        return (1 << (self.exp_bits - 1)) - 1 if self.is_float else 0

    @property
    def qmax(self) -> int:
        """Largest integer magnitude of an int format (symmetric range, methods.md decision 2)."""
        return (1 << (self.width - 1)) - 1

    # ---- values <-> raw bit patterns -------------------------------------------------------------
    def encode(self, x) -> np.ndarray:
        """Values -> raw uint32 bit patterns. Floats round to nearest even; ints must already be integers."""
        x = np.asarray(x)
        if self.name == "fp32":
            return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        if self.name == "fp16":
            with np.errstate(over="ignore"):  # out-of-range values become inf, as IEEE says
                return np.ascontiguousarray(x, dtype=np.float16).view(np.uint16).astype(np.uint32)
        if self.name == "bf16":
            u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
            nan = (u & 0x7FFFFFFF) > 0x7F800000
            r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16  # round to nearest, ties to even
            return np.where(nan, (u >> 16) | 0x40, r).astype(np.uint32)
        v = np.asarray(x)
        if not np.issubdtype(v.dtype, np.integer):
            if not np.all(np.isfinite(v)) or np.any(v != np.round(v)):
                raise UserError(f"{self.name}: values must be integers (use quantize() for real-valued tensors)")
        v = v.astype(np.int64)
        lo = -(1 << (self.width - 1)) if self.twos else -self.qmax
        if v.size and (v.min() < lo or v.max() > self.qmax):
            raise UserError(f"{self.name}: integer out of range {lo}..{self.qmax}")
        if self.twos:
            return (v & ((1 << self.width) - 1)).astype(np.uint32)
        return (np.abs(v) | ((v < 0).astype(np.int64) << (self.width - 1))).astype(np.uint32)

    def decode(self, raw) -> np.ndarray:
        """Raw bit patterns -> values: float64 for floats (exact), int64 integers for int/fixed formats."""
        raw = np.asarray(raw, dtype=np.uint32)
        if self.name == "fp32":
            return raw.view(np.float32).astype(np.float64)
        if self.name == "fp16":
            return raw.astype(np.uint16).view(np.float16).astype(np.float64)
        if self.name == "bf16":
            return (raw << 16).view(np.float32).astype(np.float64)
        r = raw.astype(np.int64)
        top = 1 << (self.width - 1)
        if self.twos:
            return np.where(r & top, r - (1 << self.width), r)
        return np.where(r & top, -(r & (top - 1)), r)

    def fields(self, raw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw patterns -> (sign 0/1, exponent field, significand with hidden bit / magnitude / tc bits)."""
        raw = np.asarray(raw, dtype=np.uint32)
        if self.is_float:
            f = np.uint32(self.frac)
            e = (raw >> f) & np.uint32((1 << self.exp_bits) - 1)
            sig = (raw & np.uint32((1 << self.frac) - 1)) | ((e != 0).astype(np.uint32) << f)
            return raw >> np.uint32(self.frac + self.exp_bits), e, sig
        top = np.uint32(self.width - 1)
        sign = (raw >> top) & np.uint32(1)
        mag = raw if self.twos else raw & np.uint32((1 << (self.width - 1)) - 1)
        return sign, np.zeros_like(raw), mag

    def scale_of(self) -> float:
        """Value of one integer step of a fixed-point format (1 for plain ints)."""
        return 2.0 ** -self.frac if not self.is_float else 1.0

    # ---- real tensors -> this format -------------------------------------------------------------
    def quantize(self, x, axis: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
        """Real values -> (integers, scale) with a symmetric scale per slice along ``axis`` (None: per tensor).

        scale = max|x| / (2^(b-1) - 1), round to nearest (methods.md decision 2). Fixed point Q(m.n) uses its
        fixed scale 2^-n and saturates instead. An all-zero slice gets scale 1.
        """
        x = np.asarray(x, dtype=np.float64)
        if self.is_float:
            raise UserError(f"{self.name} is a float format: nothing to quantise")
        if self.frac or self.name.startswith("q"):
            s = np.float64(self.scale_of())
            return np.clip(np.rint(x / s), -self.qmax, self.qmax).astype(np.int64), np.asarray(s)
        if axis is None or x.ndim == 0:
            amax = np.abs(x).max(initial=0.0)
        else:
            amax = np.abs(np.moveaxis(x, axis, 0)).reshape(x.shape[axis], -1).max(axis=1, initial=0.0)
        scale = np.where(amax > 0, amax / self.qmax, 1.0)
        shape = [1] * x.ndim
        if axis is not None and x.ndim:
            shape[axis] = -1
        q = np.rint(x / scale.reshape(shape)).astype(np.int64)
        return np.clip(q, -self.qmax, self.qmax), scale


_INT = re.compile(r"^int(\d+)(tc)?$")
_FIX = re.compile(r"^q(\d+)\.(\d+)(tc)?$")


def get(name: str) -> Format:
    """Parse a format name (see module docstring); UserError for anything else."""
    key = str(name).strip().lower()
    if key in FLOAT_LAYOUT:
        e, f = FLOAT_LAYOUT[key]
        return Format(key, "float", 1 + e + f, exp_bits=e, frac=f)
    if m := _INT.match(key):
        b = int(m.group(1))
        if not 2 <= b <= 32:
            raise UserError(f"format {name}: integer width must be 2..32")
        return Format(key, "int", b, twos=bool(m.group(2)))
    if m := _FIX.match(key):
        i, f = int(m.group(1)), int(m.group(2))
        if not 2 <= i + f + 1 <= 32:
            raise UserError(f"format {name}: Q(m.n) needs 2 <= m+n+1 <= 32")
        return Format(key, "int", i + f + 1, frac=f, twos=bool(m.group(3)))
    raise UserError(f"unknown format {name!r} (fp32, fp16, bf16, int<b>, int<b>tc, q<m>.<n>)")
