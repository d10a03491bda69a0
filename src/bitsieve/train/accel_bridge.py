"""Where training meets the accelerator registry (``bitsieve.accel.ACCELERATORS``): a design's lane groups
(which weights run in lock-step) and the cycles of a layer from the integer weights a training method produced.

Every design is the registry's model, run as it is: the weight-serial Pragmatic that BitPruner targets is the
registered ``pragmatic-ws`` (BitSim's rule), Stripes and the DNNsim Pragmatic are activation-serial and get no
weights at all (their cycles cannot depend on them). The integers are packed exactly as the accelerator packs
weights (``tiling.layout`` + ``tiling.pack_lanes``) but without re-quantising them: a pruned channel whose
largest magnitude dropped (127 -> 96) must keep its bits, which a fresh ``max|w| / 127`` scale would scramble.
Activations of activation-reading designs are captured from the original built-in on ``act_samples`` real
inputs, the same for every variant, so only the weights change.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .. import formats
from ..errors import UserError

#: balance group of a target (lanes that wait for each other) where it is not the design's packing group:
#: BitWave's packing unit is 8 lanes but its BitSim dataflows run 32-lane groups.
BALANCE_GROUP = {"bitwave": 32}


class Target:
    """One registered design for one built-in model and format: per-layer workloads, lane layouts, cycles."""

    def __init__(self, model_name: str, design: str, fmt: formats.Format, act_samples: int = 1):
        from .. import model as model_mod
        from ..accel import get, tiling

        self.acc = get(design)
        self.name, self.fmt, self.tiling = self.acc.name, fmt, tiling
        self.cfg = self.acc.configure()
        self.cfg["format"] = fmt.name
        self.acc.check_format(fmt, self.cfg)
        reads = self.acc.reads_activations(self.cfg, fmt)
        m = model_mod.load(model_name, activations=act_samples if reads else 0)
        self.workloads = {layer.name: tiling.from_layer(layer) for layer in m.layers
                          if layer.kind in ("conv", "linear")}
        self.reads_weights = all(self.acc.weight_spec(self.cfg, fmt, wl) is not None
                                 for wl in self.workloads.values())

    def spec(self, name: str):
        """(lane group, layout mode) the design packs this layer's weights in."""
        s = self.acc.weight_spec(self.cfg, self.fmt, self.workloads[name])
        if s is None:
            raise UserError(f"{self.name} does not read weight bits; it cannot be a BitPruner target")
        return int(s.group), s.layout

    def layout(self, name: str, group: int | None = None):
        G, mode = self.spec(name)
        return self.tiling.layout(self.workloads[name], int(group or G), mode)

    def cycles(self, name: str, ints: np.ndarray) -> float:
        """Cycles of one layer whose weights are the integers ``ints`` (the layer's weight shape)."""
        wl = self.workloads[name]
        wp = None
        if self.reads_weights:
            G, mode = self.spec(name)
            lay = self.tiling.layout(wl, G, mode)
            vals = gather(np.asarray(ints, dtype=np.int64).reshape(wl.out_ch, -1), lay, wl.taps)
            wp = self.tiling.pack_lanes(vals, self.fmt)
        ap = None
        aspec = self.acc.act_spec(self.cfg, self.fmt, wl)
        if aspec is not None:
            from ..simulate import pack_acts

            ap = pack_acts(wl, aspec)
        return float(self.acc.simulate(wl, wp, ap, self.cfg).cycles)


def gather(flat: np.ndarray, lay, taps: int) -> np.ndarray:
    """[O, C*taps] (index ch * taps + tap, the order of a [O, C, kh, kw] weight) -> [O, J, G] lanes, padding 0."""
    idx = np.where(lay.valid, lay.lane_ch.astype(np.int64) * taps + lay.lane_tap, 0)
    return np.where(lay.valid[None], flat[:, idx], 0)


def scatter(vals: np.ndarray, lay, taps: int, size: int) -> np.ndarray:
    """Inverse of ``gather``: [O, J, G] lanes -> [O, C*taps] (every weight sits in exactly one valid lane)."""
    idx = (lay.lane_ch.astype(np.int64) * taps + lay.lane_tap)[lay.valid]
    out = np.zeros((vals.shape[0], size), dtype=vals.dtype)
    out[:, idx] = vals[:, lay.valid]
    return out


@lru_cache(maxsize=16)
def target(model_name: str, design: str, fmt_name: str, act_samples: int = 1) -> Target:
    return Target(model_name, design, formats.get(fmt_name), act_samples)
