"""Number formats: how a tensor splits into sign, exponent and significand/magnitude bits, and back, exactly.

Every format maps values to raw bit patterns (uint32) and back. The planes core then reads a pattern as
(sign, exponent, significand) with `fields`, so one packing kernel serves floats and integers alike.

Format names (``bitsieve formats`` lists them): ``fp32``, ``fp16``, ``bf16``; ``fp8e4m3`` and ``fp8e5m2``
(OCP FP8); ``int<b>`` (sign-magnitude, the bit-serial default of methods.md decision 2), ``int<b>tc`` (two's
complement, for BBS/BitVert/Bitlet activations), 2 <= b <= 32; ``q<m>.<n>`` fixed point with m integer and n
fraction bits plus a sign (width m+n+1, sign-magnitude; ``q<m>.<n>tc`` for two's complement); the OCP
Microscaling block formats ``mxfp8e4m3``, ``mxfp8e5m2``, ``mxfp6e3m2``, ``mxfp6e2m3``, ``mxfp4``, ``mxint8``,
with ``@<k>`` for a block of k values instead of the spec's 32 (``mxfp4@16``).

FP8/FP6/FP4 values are rounded by ``ml_dtypes`` (round to nearest, ties to even). ``fp8e4m3`` is OCP e4m3fn:
no infinity, one NaN pattern per sign (S.1111.111), largest value 448. ml_dtypes, like OCP's non-saturating
mode, turns a value beyond it (|x| > 464, the tie with 480 that rounds to even 448, or an infinity) into NaN;
bitsieve refuses such a tensor with one line instead of counting NaN bits (a NaN input stays NaN). ``fp8e5m2`` keeps IEEE infinities (overflow -> inf, as
fp16 does).

An MX value is an element (FP8/FP6/FP4, or a sign-magnitude 8-bit integer with the implicit scale 2^-6: the
spec's INT8 range is symmetric, so this is its value set) times a power-of-two scale shared by a block of k
consecutive values along the dot-product axis (the planes' group axis; the last block of a row may be
short). The scale is OCP's E8M0 field X = 2^(floor(log2 max|v|) - emax), emax being the element's largest
exponent, clamped to 2^-127..2^127; an all-zero block gets 2^-127 (field 0). Elements v / X are rounded and
saturate at the element's largest value (the spec's clamp: with E4M3, v / X in 464..512 becomes 448). Each raw pattern carries its block's E8M0 field
in the 8 bits above the element, so a pattern decodes on its own and the planes keep the field per value.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import UserError

# name: (exponent bits, fraction bits, specials, ml_dtypes type). specials: "ieee" (all-ones exponent = inf /
# NaN), "nan" (e4m3fn: only all-ones exponent and fraction is NaN), "none" (FP6/FP4: every pattern finite).
FLOATS = {"fp32": (8, 23, "ieee", ""), "fp16": (5, 10, "ieee", ""), "bf16": (8, 7, "ieee", ""),
          "fp8e4m3": (4, 3, "nan", "float8_e4m3fn"), "fp8e5m2": (5, 2, "ieee", "float8_e5m2")}
MX_ELEMENTS = {"fp8e4m3": FLOATS["fp8e4m3"], "fp8e5m2": FLOATS["fp8e5m2"],
               "fp6e3m2": (3, 2, "none", "float6_e3m2fn"), "fp6e2m3": (2, 3, "none", "float6_e2m3fn"),
               "fp4": (2, 1, "none", "float4_e2m1fn"), "int8": None}
MX_BLOCK = 32  # OCP Microscaling v1.0: values per shared scale; ``mx...@<k>`` picks another
E8M0_BIAS = 127

CATALOGUE = (  # what ``bitsieve formats`` prints
    ("fp32", "IEEE binary32"),
    ("fp16", "IEEE binary16"),
    ("bf16", "bfloat16"),
    ("fp8e4m3", "OCP FP8 E4M3 (e4m3fn): no inf, max 448; a tensor beyond it is refused"),
    ("fp8e5m2", "OCP FP8 E5M2: IEEE-like, max 57344, beyond it inf"),
    ("int<b>", "b-bit sign-magnitude integer, symmetric scale per output channel, 2 <= b <= 32"),
    ("int<b>tc", "b-bit two's complement integer"),
    ("q<m>.<n>", "fixed point, m integer and n fraction bits plus a sign (q<m>.<n>tc: two's complement)"),
    ("mxfp8e4m3", f"OCP MX: FP8 E4M3 elements, one E8M0 scale per block of {MX_BLOCK}"),
    ("mxfp8e5m2", "OCP MX: FP8 E5M2 elements"),
    ("mxfp6e3m2", "OCP MX: FP6 E3M2 elements"),
    ("mxfp6e2m3", "OCP MX: FP6 E2M3 elements"),
    ("mxfp4", "OCP MX: FP4 E2M1 elements"),
    ("mxint8", "OCP MX: 8-bit integer elements (scale 2^-6)"),
    ("mx<elem>@<k>", f"an MX format with blocks of k values instead of {MX_BLOCK}"),
)


@dataclass(frozen=True)
class Format:
    """A number format. ``kind`` is 'float' or 'int'; fixed point is an int with ``frac`` fraction bits. An MX
    format (``block`` > 0) describes its element; each value also carries its block's E8M0 scale field."""

    name: str
    kind: str
    width: int  # total bits of a stored value (an MX element: its scale field sits above these bits)
    exp_bits: int = 0  # float only
    frac: int = 0  # float: fraction (mantissa) bits; fixed point: fraction bits of the scale 2^-frac
    twos: bool = False  # int: two's complement (else sign-magnitude)
    specials: str = "ieee"  # float: meaning of the all-ones exponent (see FLOATS)
    mld: str = ""  # float: the ml_dtypes type that rounds to it ("": fp32/fp16/bf16, done by NumPy)
    block: int = 0  # MX: values sharing one E8M0 scale along the group axis; 0: no shared scale

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def fixed(self) -> bool:
        """Fixed point Q(m.n): a fixed scale 2^-n, not a per-channel scale taken from the data."""
        return not self.is_float and bool(self.frac or self.name.startswith("q"))

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

    @property
    def emax(self) -> int:
        """Exponent of the largest finite value (an MX element's, which sets the block scale)."""
        if not self.is_float:
            return self.width - 2 - self.frac
        return (1 << self.exp_bits) - (2 if self.specials == "ieee" else 1) - self.bias

    @property
    def max_value(self) -> float:
        """Largest finite value (of an element, for MX)."""
        if not self.is_float:
            return self.qmax * 2.0 ** -self.frac
        top = (1 << (self.frac + 1)) - (2 if self.specials == "nan" else 1)  # e4m3fn: S.1111.111 is NaN
        return float(np.ldexp(top, self.emax - self.frac))

    # ---- values <-> raw bit patterns -------------------------------------------------------------
    def encode(self, x, axis: int = -1, shared=None) -> np.ndarray:
        """Values -> raw uint32 bit patterns. Floats round to nearest even; ints must already be integers.
        MX: blocks run along ``axis``; ``shared`` (E8M0 fields, x's shape) replaces the computed scales."""
        x = np.asarray(x)
        if self.block:
            return self._encode_mx(x, axis, shared)
        if self.mld:
            return self._cast(np.asarray(x, np.float64))
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
        return self._encode_int(x)

    def _cast(self, x: np.ndarray) -> np.ndarray:
        """float64 -> raw patterns of an ml_dtypes float (one rounding, nearest even)."""
        import ml_dtypes

        with np.errstate(over="ignore", invalid="ignore"):
            raw = x.astype(getattr(ml_dtypes, self.mld)).view(np.uint8).astype(np.uint32)
        if self.specials == "nan":
            nan = (raw & np.uint32(0x7F)) == np.uint32(0x7F)
            bad = nan & ~np.isnan(x)
            if bad.any():
                raise UserError(f"{self.name}: {int(bad.sum())} values beyond +-{self.max_value:g} (up to "
                                f"{np.abs(x[bad]).max():.4g}), which OCP e4m3fn cannot hold (no infinity; "
                                f"ml_dtypes makes them NaN): scale the tensor or use mx{self.name}")
        return raw

    def _encode_int(self, v: np.ndarray) -> np.ndarray:
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

    def _encode_mx(self, x, axis: int, shared) -> np.ndarray:
        """Real values -> element bits | E8M0 field << width, blocks of ``block`` along ``axis``."""
        v = np.asarray(x, np.float64).reshape(np.shape(x) or (1,))
        if not np.isfinite(v).all():
            raise UserError(f"{self.name}: {int((~np.isfinite(v)).sum())} non-finite values (an MX block "
                            f"holding one has no finite scale)")
        axis = axis % v.ndim
        v = np.moveaxis(v, axis, -1)
        if shared is None:
            n = v.shape[-1]
            nb = -(-n // self.block)
            a = np.pad(np.abs(v), [(0, 0)] * (v.ndim - 1) + [(0, nb * self.block - n)])
            amax = a.reshape(v.shape[:-1] + (nb, self.block)).max(axis=-1)
            e = np.frexp(amax)[1] - 1  # floor(log2 amax)
            s = np.clip(np.where(amax > 0, e - self.emax, -E8M0_BIAS), -E8M0_BIAS, E8M0_BIAS)
            s = np.repeat(s, self.block, axis=-1)[..., :n]
        else:
            s = np.moveaxis(np.asarray(shared, np.int64).reshape(np.shape(x) or (1,)), axis, -1) - E8M0_BIAS
        el = np.clip(np.ldexp(v, -s), -self.max_value, self.max_value)  # exact: a power-of-two scale
        if self.is_float:
            raw = self._cast(el)
        else:
            q = np.rint(np.ldexp(el, self.frac)).astype(np.int64)
            raw = (np.abs(q) | ((q < 0).astype(np.int64) << (self.width - 1))).astype(np.uint32)
        raw |= (s + E8M0_BIAS).astype(np.uint32) << np.uint32(self.width)
        return np.moveaxis(raw, -1, axis).reshape(np.shape(x))

    def decode(self, raw) -> np.ndarray:
        """Raw bit patterns -> values: float64 for floats and MX (exact), int64 integers for int/fixed formats."""
        raw = np.asarray(raw, dtype=np.uint32)
        if self.block:
            el = raw & np.uint32((1 << self.width) - 1)
            if self.is_float:
                v = self._uncast(el)
            else:
                v = np.ldexp(np.where(el >> np.uint32(self.width - 1), -1.0, 1.0) * (el & np.uint32(self.qmax)),
                             -self.frac)
            s = self.shared_exp(raw).astype(np.int64)
            return np.where(s == 0xFF, np.nan, np.ldexp(v, s - E8M0_BIAS))  # E8M0 0xFF is NaN
        if self.mld:
            return self._uncast(raw)
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

    def _uncast(self, raw: np.ndarray) -> np.ndarray:
        import ml_dtypes

        return raw.astype(np.uint8).view(getattr(ml_dtypes, self.mld)).astype(np.float64)

    def shared_exp(self, raw) -> np.ndarray:
        """MX: the E8M0 scale field (uint8) of each raw pattern's block; the value scale is 2^(field - 127)."""
        return ((np.asarray(raw, dtype=np.uint32) >> np.uint32(self.width)) & np.uint32(0xFF)).astype(np.uint8)

    def fields(self, raw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw patterns -> (sign 0/1, exponent field, significand with hidden bit / magnitude / tc bits)."""
        raw = np.asarray(raw, dtype=np.uint32)
        sign = (raw >> np.uint32(self.width - 1)) & np.uint32(1)
        if self.is_float:
            f = np.uint32(self.frac)
            e = (raw >> f) & np.uint32((1 << self.exp_bits) - 1)
            sig = (raw & np.uint32((1 << self.frac) - 1)) | ((e != 0).astype(np.uint32) << f)
            return sign, e, sig
        mag = raw if self.twos else raw & np.uint32(self.qmax)
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
        if self.block:
            raise UserError(f"{self.name} carries its own scale per block of {self.block}, not a per-channel "
                            f"integer grid to quantise to: use int{self.width} here")
        if self.is_float:
            raise UserError(f"{self.name} is a float format: nothing to quantise")
        if self.fixed:
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
_MX = re.compile(r"^mx([a-z0-9]+?)(?:@(\d+))?$")


def get(name: str) -> Format:
    """Parse a format name (see module docstring); UserError for anything else."""
    key = str(name).strip().lower()
    if key in FLOATS:
        e, f, specials, mld = FLOATS[key]
        return Format(key, "float", 1 + e + f, exp_bits=e, frac=f, specials=specials, mld=mld)
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
    if (m := _MX.match(key)) and m.group(1) in MX_ELEMENTS:
        block = int(m.group(2) or MX_BLOCK)
        if not 1 <= block <= 4096:
            raise UserError(f"format {name}: MX block size must be 1..4096")
        canon = f"mx{m.group(1)}" + (f"@{block}" if block != MX_BLOCK else "")
        if m.group(1) == "int8":  # sign-magnitude elements with the implicit scale 2^-6
            return Format(canon, "int", 8, frac=6, block=block)
        e, f, specials, mld = MX_ELEMENTS[m.group(1)]
        return Format(canon, "float", 1 + e + f, exp_bits=e, frac=f, specials=specials, mld=mld, block=block)
    known = ", ".join(n for n, _ in CATALOGUE)
    raise UserError(f"unknown format {name!r} (`bitsieve formats` describes them: {known})")
