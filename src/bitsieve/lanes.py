"""The one grouping truth: how a weight tensor's dot products are cut into groups of G lanes.

A method that targets a design (BitX, BitXpro, BitWave, BBS) and that design's simulator both read weights
through ``pack_weight`` here, so pruning in software or at run time sees the same groups: the same group axis,
group size, depthwise handling and padding. Layouts (per filter, over its reduction vector of c_w input
channels x k taps, read channel-last as methods.md decision 1 says):

- ``channel``: for each kernel tap, G consecutive input channels (decision 1; DNNsim's bricks);
- ``tap``: for each input channel, G consecutive kernel taps;
- ``auto``: BitSim's rule (``sim/sim/stripes.py`` ``_calc_tile_conv2d``): ``tap`` when k^2 > c_w (first
  layers, depthwise), else ``channel``;
- ``flat``: the whole channel-last reduction vector cut into G-runs (least padding).

Weights become a [O, J, G] matrix of lanes (J chunks per filter, the last of a run zero-padded). The packed
planes carry the layout's padding mask as their ``valid`` word, so padding lanes are never counted as weights.
Integer formats are quantised per output channel (decision 2) with the scale of ``reference`` weights when
given: a method's output that already sits on the original grid then comes back exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from . import formats
from .errors import UserError
from .planes import Planes, join, pack

MODES = ("auto", "channel", "tap", "flat")

# ``pack_weight`` packs a weight of more lane values than this in chunks of whole filters (about this many
# lane values each) and joins their planes: packing takes transient memory of some 40 bytes per value
# (float64 quantisation, the lanes, the format round trip, raw patterns and the kernel's outputs), against ~5
# for the planes it keeps, so an LLM head of 131 M values peaked at 5.4 GB in one go. 8 Mi values bound that
# transient at a few hundred MB whatever the tensor's size, while each chunk stays long enough for the kernel.
CHUNK_VALUES = 1 << 23


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def as_filters(shape) -> tuple[int, int, int, int]:
    """A weight shape as [O, c_w, kh, kw]: linear [O, I] -> [O, I, 1, 1], conv1d [O, C, k] -> [O, C, 1, k]."""
    s = tuple(int(x) for x in shape)
    if len(s) == 2:
        return (s[0], s[1], 1, 1)
    if len(s) == 3:
        return (s[0], s[1], 1, s[2])
    if len(s) == 4:
        return s
    raise UserError(f"a weight of shape {s} has no filters to group (2-D linear or 3/4-D conv expected)")


@dataclass(frozen=True, eq=False)
class Layout:
    """How each filter's dot product is cut into J chunks of G lanes. ``lane_ch``/``lane_tap`` [J, G] give
    the input channel (within the conv group) and the kernel tap (ky * kw + kx) of every lane; -1 = padding."""

    mode: str
    G: int
    lane_ch: np.ndarray
    lane_tap: np.ndarray
    shape: tuple  # the filters' shape [O, c_w, kh, kw]

    @property
    def J(self) -> int:
        return self.lane_ch.shape[0]

    @property
    def valid(self) -> np.ndarray:
        return self.lane_ch >= 0

    def valid_words(self) -> np.ndarray:
        """uint64 [O * J]: bit g set where lane g of the chunk holds a real weight (the planes' ``valid``)."""
        bits = self.valid.astype(np.uint64) << np.arange(self.G, dtype=np.uint64)
        per_chunk = np.bitwise_or.reduce(bits, axis=1)
        return np.tile(per_chunk, self.shape[0])


def layout(shape, G: int, mode: str = "auto") -> Layout:
    """The lane layout of a weight of ``shape`` for G lanes (module docstring)."""
    if mode not in MODES:
        raise UserError(f"unknown lane layout {mode!r} ({', '.join(MODES)})")
    if not 1 <= G <= 64:
        raise UserError(f"lanes per group must be 1..64, got {G}")
    O, cw, kh, kw = as_filters(shape)
    taps = kh * kw
    if mode == "auto":
        mode = "tap" if taps > cw else "channel"
    lane = np.arange(G)
    if mode == "channel":
        cb = _ceil(cw, G)
        ch = (np.arange(cb)[:, None] * G + lane)[None].repeat(taps, 0)  # [taps, cb, G]
        tap = np.broadcast_to(np.arange(taps)[:, None, None], ch.shape)
        ch, tap = ch.reshape(-1, G), tap.reshape(-1, G)
        ok = ch < cw
    elif mode == "tap":
        tb = _ceil(taps, G)
        tap = (np.arange(tb)[:, None] * G + lane)[None].repeat(cw, 0)  # [cw, tb, G]
        ch = np.broadcast_to(np.arange(cw)[:, None, None], tap.shape)
        ch, tap = ch.reshape(-1, G), tap.reshape(-1, G)
        ok = tap < taps
    else:  # flat, channel-last order k = tap * cw + ch
        K = taps * cw
        k = np.arange(_ceil(K, G) * G).reshape(-1, G)
        ok = k < K
        tap, ch = k // cw, k % cw
    return Layout(mode, G, np.where(ok, ch, -1).astype(np.int32), np.where(ok, tap, -1).astype(np.int32),
                  (O, cw, kh, kw))


def to_lanes(w: np.ndarray, lay: Layout) -> np.ndarray:
    """A weight-shaped array (any dtype) -> [O, J, G] in the layout's lanes, padding 0."""
    O, cw, kh, kw = lay.shape
    taps, G = kh * kw, lay.G
    w3 = np.asarray(w).reshape(O, cw, taps)
    if lay.mode == "channel":  # [O, taps, cw] -> pad cw to cb*G
        v = np.zeros((O, taps, _ceil(cw, G) * G), w3.dtype)
        v[:, :, :cw] = w3.transpose(0, 2, 1)
    elif lay.mode == "tap":  # [O, cw, taps] -> pad taps
        v = np.zeros((O, cw, _ceil(taps, G) * G), w3.dtype)
        v[:, :, :taps] = w3
    else:  # flat channel-last: k = tap * cw + ch
        v = np.zeros((O, _ceil(taps * cw, G) * G), w3.dtype)
        v[:, :taps * cw] = w3.transpose(0, 2, 1).reshape(O, -1)
    return v.reshape(O, -1, G)


def from_lanes(v: np.ndarray, lay: Layout, shape) -> np.ndarray:
    """The inverse of ``to_lanes``: [O, J, G] lanes -> an array of the weight's own ``shape``."""
    O, cw, kh, kw = lay.shape
    taps = kh * kw
    v = np.asarray(v).reshape(O, -1)
    if lay.mode == "channel":
        w3 = v.reshape(O, taps, -1)[:, :, :cw].transpose(0, 2, 1)
    elif lay.mode == "tap":
        w3 = v.reshape(O, cw, -1)[:, :, :taps]
    else:
        w3 = v[:, :taps * cw].reshape(O, taps, cw).transpose(0, 2, 1)
    return np.ascontiguousarray(w3).reshape(shape)


def quantized(w: np.ndarray, fmt: formats.Format, reference=None,
              grid: formats.Format | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """int64 integers of a float weight and the per-output-channel scale (decision 2); the scale comes from
    ``reference`` (e.g. the weights before a method) when given, so values on that grid stay put. ``grid``: the
    integer format whose steps the scale follows when ``fmt`` is a wider container (BitVert packs int8 data in
    int10tc, so zero-point-shifted weights beyond +-127 are kept, not clipped); values clip to ``fmt``."""
    if fmt.is_float:
        return np.asarray(w, np.float32), None
    if fmt.fixed:
        return fmt.quantize(w, axis=0)[0], None
    ref = w if reference is None else np.asarray(reference, np.float32).reshape(np.shape(w))
    _, scale = (grid or fmt).quantize(ref, axis=0)
    q = np.rint(np.asarray(w, np.float64) / scale.reshape((-1,) + (1,) * (np.ndim(w) - 1)))
    lo = -(1 << (fmt.width - 1)) if fmt.twos else -fmt.qmax
    return np.clip(q, lo, fmt.qmax).astype(np.int64), scale.reshape(-1)


def pack_lanes(vals: np.ndarray, fmt: formats.Format, align: str = "none", lay: Layout | None = None,
               scale=None) -> Planes:
    """[O, J, G] lane values -> Planes of shape (O, J, G) grouped along the lanes: one group per (filter,
    chunk), group index o * J + j. Integers are packed as they are; ``scale`` (per filter) makes
    ``values()`` real; ``lay`` marks its padding lanes as not valid."""
    G = vals.shape[2]
    p = pack(np.ascontiguousarray(vals), fmt, group=G, align=align, axis=2, per_channel=False)
    if lay is not None:
        p = replace(p, lane_valid=lay.valid_words(), _cache={})
    if scale is not None:
        p = replace(p, scale=np.asarray(scale, np.float64))
    return p


def pack_weight(weight, fmt, G: int, mode: str = "auto", align: str = "none", *, reference=None,
                round_to: str = "") -> tuple[Planes, Layout]:
    """THE grouping function: a weight in ``fmt``'s lanes of ``G`` per group, its layout. ``values()`` of the
    planes are real weights in lanes; ``from_lanes`` puts them back. ``round_to``: round float values to that
    float format first (bf16 data in an fp32 datapath); for an integer container, the data's integer format whose
    grid the values follow (``quantized``).

    A weight of more than ``CHUNK_VALUES`` lane values is packed a chunk of whole filters at a time and the
    chunks' planes joined (``planes.join``): the result is the one-go packing, field for field, because every
    step is per filter. The layout depends on the shape only through a filter's (c_w, kh, kw), never on the
    number of filters (a grouped or depthwise conv's weight is already per filter, [O, C / groups, kh, kw], and
    BitXpro's tiles of lock-step filters are formed from the planes afterwards); a group never leaves its
    filter; float rounding is per value, MX blocks run along a group's lanes, and integer scales are per output
    channel, from the same rows of ``reference``. A ``reference`` that is not the weight's size goes in one go
    (and fails there as it always did)."""
    fmt = formats.get(fmt) if isinstance(fmt, str) else fmt
    w = np.asarray(weight, dtype=np.float32)
    lay = layout(w.shape, G, mode)
    O, per_filter = lay.shape[0], lay.J * G
    step = max(1, CHUNK_VALUES // max(per_filter, 1))
    per_channel = not fmt.is_float and not fmt.fixed  # scales from reference
    if reference is not None and per_channel:
        reference = np.asarray(reference, np.float32)
        if reference.size != w.size:
            step = O
        else:
            reference = reference.reshape(w.shape)
    if step >= O:
        return _pack_filters(w, fmt, lay, align, reference, round_to), lay
    ref = reference if per_channel else None
    parts = (_pack_filters(w[o:o + step], fmt, replace(lay, shape=(len(w[o:o + step]),) + lay.shape[1:]), align,
                           None if ref is None else ref[o:o + step], round_to) for o in range(0, O, step))
    return join(parts, (O, lay.J, G)), lay


def _pack_filters(w, fmt, lay, align, reference, round_to) -> Planes:
    """``pack_weight`` of the filters ``w`` in the layout ``lay`` (whose shape they are), in one go."""
    grid = formats.get(round_to) if round_to and not fmt.is_float else None
    q, scale = quantized(w, fmt, reference, None if grid is None or grid.is_float else grid)
    vals = to_lanes(q, lay)
    del q
    if round_to and fmt.is_float:
        r = formats.get(round_to)
        vals = r.decode(r.encode(vals)).astype(np.float32)
    return pack_lanes(vals, fmt, align if fmt.is_float else "none", lay, scale)
