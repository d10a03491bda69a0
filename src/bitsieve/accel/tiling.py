"""Layer shapes -> tiles: the shared dataflow helper of methods.md section 1.3.

Every accelerator model sees a layer as a ``Workload`` (a conv with stride, padding and groups, depthwise
included, or a linear layer over tokens) and asks this module for the two things that depend only on the
shape, so that each model states just its per-tile rule and its synchronisation:

1. **Lane layout** (``layout``): how the dot-product axis of each filter is cut into chunks of G lanes, read
   from ``bitsieve.lanes``, the one grouping function that the methods use too (``channel``, ``tap``,
   ``auto`` = BitSim's rule, ``flat``). Weights become a [O, J, G] matrix of lanes that the planes core packs.

2. **Tiles**. Two dataflows from the two public simulators:
   - ``bitsim_tiles`` (weight-serial designs, BitSim ``_calc_tile_*``): a tile is R filters (PE rows) x one
     chunk x C output pixels (PE columns). Tile count = ceil(c_out/R) x J x ceil(ow/C) x oh (x batch);
     depthwise/grouped convs never mix conv groups in a tile (depthwise: one filter per tile, as BitSim's
     ``_calc_dwconv_tile``); linear: J x ceil(c_out/R) x ceil(tokens/C). The weights alone set a tile's
     cost, so a per-(filter, chunk) cost reduces to tiles with one max and one sum.
   - ``dnnsim_streams`` (activation-serial designs, DNNsim ``OutputStationary``/``Laconic``): C consecutive
     output pixels (row-major, per image) form a window set; each window walks the steps (ky, kx, channel
     brick of L lanes); R rows x T tiles of filters share the activations. Returns, per step and column,
     the index of the activation brick (input position x channel brick) it reads, so a per-brick cost
     (computed once per input brick) gathers into [steps, columns] and the model applies its column
     synchronisation. Depthwise: L channels share a brick, one filter per lane (DNNsim maps
     filter f to lane f), one stream per channel brick, T tiles take the bricks round-robin.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import formats
from ..errors import UserError
from .. import lanes
from ..lanes import Layout
from .base import ceil_div

LAYOUTS = lanes.MODES


def _pair(v) -> tuple[int, int]:
    if v is None:
        return (1, 1)
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    v = tuple(int(x) for x in v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


@dataclass(frozen=True, eq=False)
class Workload:
    """One conv or linear layer as the accelerator models see it.

    ``weight``: float32 [O, C/groups, kh, kw] (a linear [O, I] is stored as [O, I, 1, 1]).
    ``activation``: float32 [N, C, H, W] input activations captured on real inputs, or None (a linear
    layer's [..., I] tokens are stored as [1, I, 1, T]: one 'image' one pixel high, T pixels wide).
    """

    name: str
    kind: str
    weight: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    in_ch: int
    in_hw: tuple[int, int]
    batch: int
    activation: np.ndarray | None = None

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def conv(cls, weight, activation=None, *, stride=1, padding=0, groups=1, in_hw=None, batch=None,
             name="conv") -> "Workload":
        w = np.asarray(weight, dtype=np.float32)
        if w.ndim != 4:
            raise UserError(f"{name}: a conv weight must be [O, C/groups, kh, kw], got shape {w.shape}")
        groups = int(groups)
        if w.shape[0] % groups:
            raise UserError(f"{name}: {w.shape[0]} filters do not split into {groups} groups")
        a = None if activation is None else np.asarray(activation, dtype=np.float32)
        if a is not None:
            if a.ndim != 4 or a.shape[1] != w.shape[1] * groups:
                raise UserError(f"{name}: activation {a.shape} does not match weight {w.shape} x {groups} groups")
            in_hw, batch = a.shape[2:], a.shape[0]
        if in_hw is None:
            raise UserError(f"{name}: the input size is needed (activation or in_hw)")
        wl = cls(name, "conv", w, _pair(stride), _pair(padding), groups, w.shape[1] * groups,
                 tuple(int(x) for x in in_hw), int(batch or 1), a)
        if min(wl.out_hw) < 1:
            raise UserError(f"{name}: kernel {w.shape[2:]} larger than the padded input {in_hw}")
        return wl

    @classmethod
    def linear(cls, weight, activation=None, *, tokens=None, name="linear") -> "Workload":
        w = np.asarray(weight, dtype=np.float32)
        if w.ndim != 2:
            raise UserError(f"{name}: a linear weight must be [O, I], got shape {w.shape}")
        a = None
        if activation is not None:
            a = np.asarray(activation, dtype=np.float32)
            if a.shape[-1] != w.shape[1]:
                raise UserError(f"{name}: activation {a.shape} does not end in {w.shape[1]} features")
            a = a.reshape(-1, w.shape[1])
            tokens = a.shape[0]
            a = np.ascontiguousarray(a.T)[None, :, None, :]
        tokens = int(tokens or 1)
        return cls(name, "linear", w[:, :, None, None], (1, 1), (0, 0), 1, w.shape[1], (1, tokens), 1, a)

    # ---- geometry -----------------------------------------------------------------------------------
    @property
    def out_ch(self) -> int:
        return int(self.weight.shape[0])

    @property
    def cw(self) -> int:
        """Input channels per filter (per conv group)."""
        return int(self.weight.shape[1])

    @property
    def og(self) -> int:
        """Filters per conv group."""
        return self.out_ch // self.groups

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weight.shape[2]), int(self.weight.shape[3])

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.cw == 1

    @property
    def out_hw(self) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        H, W = self.in_hw
        return (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1

    @property
    def windows(self) -> int:
        """Output positions per image (tokens for a linear layer)."""
        oh, ow = self.out_hw
        return oh * ow

    @property
    def macs(self) -> int:
        return self.out_ch * self.cw * self.taps * self.windows * self.batch

    @property
    def padded_hw(self) -> tuple[int, int]:
        return self.in_hw[0] + 2 * self.padding[0], self.in_hw[1] + 2 * self.padding[1]

    def describe(self) -> str:
        if self.kind == "linear":
            return f"linear {self.cw}->{self.out_ch} x {self.in_hw[1]} tokens"
        kh, kw = self.kernel
        g = " depthwise" if self.depthwise else (f" groups={self.groups}" if self.groups > 1 else "")
        return (f"conv {self.in_ch}->{self.out_ch} k{kh}x{kw} s{self.stride[0]} p{self.padding[0]}{g} "
                f"@{self.in_hw[0]}x{self.in_hw[1]} x{self.batch}")


def from_layer(layer) -> Workload:
    """A ``bitsieve.model.Layer`` (kind conv/linear, weight, stride, padding, groups, per-sample in_shape,
    captured activation [N, *in_shape]) -> Workload. Layers without captured activations keep their
    shapes (weight-only designs still work; activation-serial designs then say what is missing)."""
    kind = getattr(layer, "kind", None)
    w = np.asarray(layer.weight, dtype=np.float32)
    act = getattr(layer, "activation", None)
    act = None if act is None else np.asarray(act, dtype=np.float32)
    in_shape = getattr(layer, "in_shape", None)
    if kind == "conv":
        if w.ndim == 3:  # conv1d [O, C, k] -> [O, C, 1, k]
            w = w[:, :, None, :]
        if act is not None and act.ndim == 3:
            act = act[:, :, None, :]
        in_hw = tuple(in_shape)[-2:] if in_shape is not None else None
        padding = getattr(layer, "padding", 0)
        if isinstance(padding, str):
            raise UserError(f"{layer.name}: string padding {padding!r} is not supported")
        if in_hw is None and act is None:  # a weights file: no input size, cost one output pixel
            (ph, pw), (kh, kw) = _pair(padding or 0), w.shape[2:]
            in_hw = (max(kh - 2 * ph, 1), max(kw - 2 * pw, 1))
        return Workload.conv(w, act, stride=getattr(layer, "stride", 1) or 1, padding=padding or 0,
                             groups=getattr(layer, "groups", 1) or 1, in_hw=in_hw, batch=1, name=layer.name)
    if kind == "linear":
        tokens = int(np.prod(tuple(in_shape)[:-1])) if (act is None and in_shape) else None
        return Workload.linear(w.reshape(w.shape[0], -1), act, tokens=tokens, name=layer.name)
    raise UserError(f"layer {layer.name} is a {kind!r} layer: accelerator models take conv and linear layers")


# ---- lane layout (the one grouping truth lives in bitsieve.lanes) ---------------------------------------------
def layout(wl: Workload, G: int, mode: str = "auto") -> Layout:
    """The lane layout of ``wl``'s weights for G lanes (``bitsieve.lanes.layout``)."""
    return lanes.layout(wl.weight.shape, G, mode)


def lane_values(wl: Workload, lay: Layout, fmt: formats.Format, weight=None) -> np.ndarray:
    """Weights in lanes, [O, J, G]: float32 for float formats, int64 integers (symmetric per-output-channel
    scale, methods.md decision 2) for int formats. Padding lanes are 0. ``weight`` (e.g. after a method) is
    quantised with the scale of the layer's own weights, so a method's integers come back exactly."""
    w = wl.weight if weight is None else np.asarray(weight, dtype=np.float32).reshape(wl.weight.shape)
    q, _ = lanes.quantized(w, fmt, None if weight is None else wl.weight)
    return lanes.to_lanes(q, lay)


pack_lanes = lanes.pack_lanes


# ---- weight-serial tiles (BitSim) ------------------------------------------------------------------------
def col_blocks(wl: Workload, C: int) -> int:
    """PE-column steps of one (filter block, chunk) tile: ceil(ow / C) x oh x batch (BitSim); a linear layer
    is one row of T tokens, so ceil(T / C)."""
    oh, ow = wl.out_hw
    return ceil_div(ow, C) * oh * wl.batch


def row_blocks(cost: np.ndarray, wl: Workload, R: int, order: np.ndarray | None = None) -> np.ndarray:
    """[O, J] per-(filter, chunk) costs -> [groups, blocks, R, J] (padding rows cost 0); filters never
    share a tile across conv groups. ``order``: a permutation of the filters inside each group (channel
    reordering)."""
    O, J = cost.shape
    c = cost.reshape(wl.groups, wl.og, J)
    if order is not None:
        c = np.take_along_axis(c, order.reshape(wl.groups, wl.og)[:, :, None], axis=1)
    nb = ceil_div(wl.og, R)
    pad = nb * R - wl.og
    if pad:
        c = np.concatenate([c, np.zeros((wl.groups, pad, J), c.dtype)], axis=1)
    return c.reshape(wl.groups, nb, R, J)


def bitsim_tiles(cost: np.ndarray, wl: Workload, R: int, C: int, order=None) -> tuple[np.ndarray, int]:
    """Per-tile cost (max over the R rows of a tile) [groups, blocks, J] and how many column steps each tile
    repeats for. Layer cycles = tile.sum() * repeats."""
    return row_blocks(cost, wl, R, order).max(axis=2), col_blocks(wl, C)


# ---- activation-serial streams (DNNsim) -------------------------------------------------------------------
def act_grouped(wl: Workload, pad: bool = True) -> np.ndarray:
    """Input activations as [Nb, Cg, Hp, Wp] for packing along channels: a regular or grouped conv becomes
    one 'image' per (sample, conv group) holding its c_w channels; a depthwise conv keeps [N, C, H, W]
    (its channel bricks hold one filter per lane). Spatial zero padding included when ``pad``."""
    a = wl.activation
    if a is None:
        raise UserError(f"{wl.name}: this accelerator reads the input activations; load the model with "
                        "captured activations")
    if wl.groups > 1 and not wl.depthwise:
        N, C, H, W = a.shape  # order (group, sample): the images of one conv group are contiguous
        a = a.reshape(N, wl.groups, wl.cw, H, W).transpose(1, 0, 2, 3, 4).reshape(wl.groups * N, wl.cw, H, W)
    if pad and (wl.padding[0] or wl.padding[1]):
        ph, pw = wl.padding
        a = np.pad(a, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    return np.ascontiguousarray(a)


DEPTHWISE = ("tiles", "dnnsim")


@dataclass(frozen=True, eq=False)
class Streams:
    """DNNsim schedule of one layer. ``idx`` [Q, S, C]: for stream q, step s and column c, the flat index of
    the activation brick read (into [Nb, Hp, Wp, cb]); -1 = idle column. A stream is one column-sync state,
    its steps in DNNsim's issue order (``WindowFirstOutS``, ``dnnsim_issue_streams``): per sample, conv
    group, window set, filter pass (``passes`` passes of R x T filters, the tiles in lock-step), step (ky, kx,
    brick); Q = samples. Depthwise (``depthwise`` = 'tiles', bitsieve's mapping): one stream per channel brick
    over every image (one filter per lane), ``tiles`` tiles take the streams round-robin; 'dnnsim': DNNsim's
    mapping, every brick in turn on one tile (per sample: brick, window set, pass, tap). ``shape``: the axes of
    S (groups or bricks, window sets, passes, steps); ``repeat``: how many times every stream runs."""

    idx: np.ndarray
    steps: int
    passes: int
    tiles: int
    depthwise: str
    shape: tuple
    repeat: int

    def combine(self, stream_cycles: np.ndarray) -> float:
        """Per-stream cycles [Q] -> layer cycles (sum, or the busiest tile of the round-robin) x ``repeat``."""
        if self.depthwise == "tiles":
            return round_robin(stream_cycles, self.tiles) * self.repeat
        return float(np.sum(stream_cycles)) * self.repeat


def dnnsim_streams(wl: Workload, L: int, C: int, R: int, T: int) -> Streams:
    """One filter pass of the DNNsim output-stationary schedule, every image in one stream (images in
    ``act_grouped`` order), repeated ``passes`` times; depthwise as 'tiles'. For rules whose cost does not
    depend on the issue order (PNPU's lane model)."""
    st = dnnsim_issue_streams(wl, L, C, R, T, "tiles")
    if wl.depthwise:
        return st
    Gi, nsets, passes, steps = st.shape
    idx = st.idx.reshape(-1, Gi, nsets, passes, steps, C)[:, :, :, 0].transpose(1, 0, 2, 3, 4).reshape(1, -1, C)
    return Streams(idx, steps, passes, T, "", (Gi * wl.batch, nsets, 1, steps), passes)


def dnnsim_issue_streams(wl: Workload, L: int, C: int, R: int, T: int, depthwise: str = "tiles") -> Streams:
    """The DNNsim output-stationary schedule of ``wl`` for L lanes, C columns, R rows, T tiles, one stream per
    column-sync state in DNNsim's issue order (``Streams``)."""
    (kh, kw), (sh, sw) = wl.kernel, wl.stride
    Hp, Wp = wl.padded_hw
    oh, ow = wl.out_hw
    N = wl.batch
    cb = ceil_div(wl.in_ch if wl.depthwise else wl.cw, L)
    Gi = 1 if wl.depthwise else wl.groups
    nwin = oh * ow
    nsets = ceil_div(nwin, C)
    wins = np.arange(nsets * C)
    oy, ox = wins // ow, wins % ow
    real = wins < nwin
    img = np.arange(Gi * N).reshape(Gi, N).T  # [N, Gi]: act_grouped orders its images (group, sample)
    base = ((img[..., None] * Hp + oy * sh) * Wp + ox * sw) * cb  # [N, Gi, nsets*C]
    base = np.where(real, base, -1).reshape(N, Gi, nsets, 1, C)
    ky, kx = np.divmod(np.arange(kh * kw), kw)
    tap_off = (ky * Wp + kx) * cb  # [taps]
    if wl.depthwise:
        off = tap_off[None, :] + np.arange(cb)[:, None]  # [cb, taps]
        b0 = base[:, 0, :, 0][:, None, :, None, :]  # [N, 1, nsets, 1, C]
        idx = np.where(b0 >= 0, b0 + off[None, :, None, :, None], -1)  # [N, cb, nsets, taps, C]
        if depthwise == "dnnsim":
            idx = np.broadcast_to(idx[:, :, :, None], (N, cb, nsets, wl.og, kh * kw, C))
            return Streams(idx.reshape(N, -1, C), kh * kw, wl.og, 1, "dnnsim", (cb, nsets, wl.og, kh * kw), 1)
        idx = idx.transpose(1, 0, 2, 3, 4).reshape(cb, -1, C)
        return Streams(idx, kh * kw, wl.og, T, "tiles", (N, nsets, 1, kh * kw), wl.og)
    off = (tap_off[:, None] + np.arange(cb)[None, :]).reshape(-1)  # [(taps, cb)]
    passes = ceil_div(wl.og, R * T)
    idx = np.where(base >= 0, base + off[:, None], -1)  # [N, Gi, nsets, steps, C]
    idx = np.broadcast_to(idx[:, :, :, None], (N, Gi, nsets, passes, off.size, C))
    return Streams(idx.reshape(N, -1, C), off.size, passes, T, "", (Gi, nsets, passes, off.size), 1)


def round_robin(work, tiles: int) -> float:
    """Jobs with the given cycles dealt to ``tiles`` parallel units in order (job q -> unit q mod tiles);
    each unit runs its jobs back to back; the layer ends with the busiest unit."""
    w = np.asarray(work, dtype=np.float64).reshape(-1)
    per = np.zeros(max(int(tiles), 1))
    np.add.at(per, np.arange(w.size) % per.size, w)
    return float(per.max(initial=0.0))


def tap_sums(wl: Workload, per_brick: np.ndarray, L: int) -> np.ndarray:
    """Sum over every output pixel of what each (tap, brick, lane) reads: ``per_brick`` [n_bricks, L] in
    brick order (image, y, x, brick) of ``act_grouped`` -> [Gi, taps, cb, L], Gi = conv groups (the images
    of group g are contiguous) or 1 for a depthwise conv. Strided slices, no gather."""
    Hp, Wp = wl.padded_hw
    oh, ow = wl.out_hw
    (kh, kw), (sh, sw) = wl.kernel, wl.stride
    nimg_cb = per_brick.shape[0] // (Hp * Wp)
    cb = ceil_div(wl.in_ch if wl.depthwise else wl.cw, L)
    v = per_brick.reshape(nimg_cb // cb, Hp, Wp, cb, L)
    Gi = 1 if wl.depthwise else wl.groups
    v = v.reshape(Gi, -1, Hp, Wp, cb, L)
    out = np.zeros((Gi, kh * kw, cb, L), dtype=np.int64)
    for ky in range(kh):
        for kx in range(kw):
            sl = v[:, :, ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw]
            out[:, ky * kw + kx] = sl.sum(axis=(1, 2, 3), dtype=np.int64)
    return out


def gather(costs_flat: np.ndarray, idx: np.ndarray, idle=0) -> np.ndarray:
    """costs_flat[idx] with ``idle`` where idx is -1."""
    out = costs_flat[np.maximum(idx, 0)]
    return np.where(idx >= 0, out, idle)
