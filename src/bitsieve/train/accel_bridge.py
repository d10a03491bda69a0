"""Where training meets the accelerator models of ``bitsieve.accel``: a target BSA's lane groups (which weights
run in lock-step) and the cycles of a layer from the integer weights a training method produced.

The integers are packed exactly as the accelerator packs weights (``tiling.layout`` + ``tiling.pack_lanes``)
but without re-quantising them: a pruned channel whose largest magnitude dropped (127 -> 96) must keep its bits,
which a fresh ``max|w| / 127`` scale would scramble.

Targets: ``laconic``, ``bitlet`` and ``bitwave`` are the registry's models, run as they are. The registry's
``pragmatic`` is DNNsim's *activation*-serial design, whose cycles do not depend on weight bits at all, so the
BitPruner target ``pragmatic`` is the weight-serial reading of methods.md 5.2 / 7.2 (BitSim's weight-serial
Pragmatic): the registry's own Pragmatic brick rule (DNNsim two-stage shifter, Booth-like terms,
``accel.pragmatic.brick_cost``) applied to each filter's weight bricks of ``lanes`` lanes, and the registry's
weight-serial tiling (``tiling.bitsim_tiles``: a tile waits for the slowest of its ``rows`` filters and repeats
for every block of ``columns`` output pixels). Activations of the laconic model are captured from the original
built-in on ``act_samples`` real inputs, the same for every variant, so only the weights change.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .. import formats
from ..errors import UserError

#: BitPruner targets and the balance group of each (lanes that wait for each other); the layout is the
#: accelerator's. BitWave's packing unit is 8 lanes but its BitSim dataflows run 32-lane groups.
BALANCE_GROUP = {"pragmatic": None, "laconic": None, "bitlet": None, "bitwave": 32}


def available(target: str) -> bool:
    try:
        from ..accel import ACCELERATORS
    except ImportError:
        return False
    return target in ACCELERATORS


class Target:
    """One target accelerator for one built-in model: per-layer workloads, lane layouts, cycles."""

    def __init__(self, model_name: str, target: str, fmt: formats.Format, act_samples: int = 1):
        from .. import model as model_mod
        from ..accel import ACCELERATORS, tiling

        if target not in ACCELERATORS:
            raise UserError(f"unknown target accelerator {target!r}")
        self.name, self.fmt, self.tiling = target, fmt, tiling
        self.acc = ACCELERATORS[target]
        self.cfg = self.acc.configure()
        self.cfg["format"] = fmt.name
        self.acc.check_format(fmt, self.cfg)
        self.weight_serial_pragmatic = target == "pragmatic"
        needs_acts = self.acc.needs_activations and not self.weight_serial_pragmatic
        m = model_mod.load(model_name, activations=act_samples if needs_acts else 0)
        self.workloads = {layer.name: tiling.from_layer(layer) for layer in m.layers
                          if layer.kind in ("conv", "linear")}

    def spec(self, name: str):
        """(lane group, layout mode) the accelerator packs this layer's weights in."""
        wl = self.workloads[name]
        if self.weight_serial_pragmatic:
            return int(self.cfg["lanes"]), "channel"
        s = self.acc.weight_spec(self.cfg, self.fmt, wl)
        if s is None:
            raise UserError(f"{self.name} does not read weight bits; it cannot be a BitPruner target")
        return int(s.group), s.layout

    def layout(self, name: str, group: int | None = None):
        G, mode = self.spec(name)
        return self.tiling.layout(self.workloads[name], int(group or G), mode)

    def cycles(self, name: str, ints: np.ndarray) -> float:
        """Cycles of one layer whose weights are the integers ``ints`` (the layer's weight shape)."""
        wl = self.workloads[name]
        G, mode = self.spec(name)
        lay = self.tiling.layout(wl, G, mode)
        vals = gather(np.asarray(ints, dtype=np.int64).reshape(wl.out_ch, -1), lay, wl.taps)
        wp = self.tiling.pack_lanes(vals, self.fmt)
        if self.weight_serial_pragmatic:
            from ..accel.pragmatic import brick_cost

            cost, _ = brick_cost(wp.magnitudes().astype(np.int64), self.cfg, self.fmt.nbits)
            t, rep = self.tiling.bitsim_tiles(cost.reshape(wl.out_ch, lay.J).astype(np.float64), wl,
                                              int(self.cfg["rows"]), int(self.cfg["columns"]))
            return float(t.sum()) * rep
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


@lru_cache(maxsize=8)
def target(model_name: str, name: str, fmt_name: str, act_samples: int = 1) -> Target:
    return Target(model_name, name, formats.get(fmt_name), act_samples)
