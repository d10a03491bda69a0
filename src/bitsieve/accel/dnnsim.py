"""What the DNNsim family (DaDianNao, Stripes, Pragmatic, Laconic, Bit-Tactical) shares: an output-stationary
array of ``columns`` windows x ``rows`` filters x ``tiles`` filter sets, each PE a ``lanes``-wide inner
product over one channel brick (DNNsim ``core/src/OutputStationary.cpp``), fixed-point operands in
sign-magnitude (DNNsim converts every value to its magnitude, ``base/src/Array.cpp``), and activation
bricks read at padded input positions. The per-model rule is a cost per activation brick (or per brick x
weight) that ``tiling.dnnsim_streams`` turns into [steps, columns] and ``kernels.column_sync`` into cycles.

Linear layers map their tokens to the columns (a transformer's tokens, a CNN classifier's batch). DNNsim's
batch-1 inner-product mode instead deals successive input bricks to the columns round-robin; with at least
as many tokens as columns the two schedules do the same work per column.
"""
from __future__ import annotations

import numpy as np

from .. import formats
from ..planes import Planes, _bits
from . import tiling
from .base import Accelerator, LayerResult, PackSpec
from .energy import sram_operand_bits


def sign_magnitude(fmt: formats.Format) -> formats.Format:
    """The sign-magnitude int format of the same width (DNNsim reads magnitudes)."""
    return fmt if fmt.is_float or not fmt.twos else formats.get(fmt.name[:-2])


class DnnsimModel(Accelerator):
    """Base of the activation-serial DNNsim models (not registered itself)."""

    formats = ("int",)
    needs_activations = True
    uses_weights = False

    def weight_spec(self, cfg, fmt, wl):
        if not self.uses_weights:
            return None
        return PackSpec(sign_magnitude(fmt).name, cfg["lanes"], "none", "channel")

    def act_spec(self, cfg, fmt, wl):
        return PackSpec(sign_magnitude(fmt).name, cfg["lanes"], "none", "act", True)

    def n_pe(self, cfg):
        return cfg["columns"] * cfg["rows"] * cfg["tiles"]

    def units(self, cfg, fmt):
        """Each lane multiplies one activation bit (or term) by a B-bit weight per cycle."""
        return cfg["lanes"] * self.n_pe(cfg) * self.width(fmt)

    def streams(self, wl, cfg, columns=None) -> tiling.Streams:
        return tiling.dnnsim_streams(wl, cfg["lanes"], columns or cfg["columns"], cfg["rows"], cfg["tiles"])

    # ---- shared event counts --------------------------------------------------------------------------
    def events(self, wl, cfg, fmt, cycles, st: tiling.Streams, extra=None) -> dict:
        """Energy-model counts: PE-cycles (every PE is clocked every cycle, as BitSim charges them), MACs,
        and the SRAM bits of real operands (DNNsim's weight/activation buffer reads, padding not counted):
        a weight brick once per window set of C columns, an activation brick once per filter pass."""
        steps = st.idx.shape[0] * st.idx.shape[1] * st.passes
        window_sets = wl.batch * -(-wl.windows // st.idx.shape[2])
        ev = {"pe_cycles": cycles * self.n_pe(cfg), "macs": wl.macs, "tile_steps": steps,
              **sram_operand_bits(wl, window_sets, st.passes, self.width(fmt))}
        if extra:
            ev.update(extra)
        return ev


def brick_values(aplanes: Planes) -> tuple[np.ndarray, np.ndarray]:
    """Activation bricks [n_bricks, L]: magnitudes (int64) and signs (bool), brick order (image, y, x, brick)."""
    mags = aplanes.magnitudes().astype(np.int64)
    signs = _bits(aplanes.signs, aplanes.group).astype(bool)
    return mags, signs


def stream_costs(brick_cost: np.ndarray, st: tiling.Streams, idle=0):
    """Per-brick costs -> [Q, S, C] costs and the active mask."""
    cost = tiling.gather(np.asarray(brick_cost).reshape(-1), st.idx, idle)
    return cost, st.idx >= 0


def sync_streams(cost, active, registers: int):
    """kernels.column_sync on every stream: (cycles per stream [Q], busy column-cycles, max-sum)."""
    from .kernels import column_sync

    cyc, busy = [], 0
    for q in range(cost.shape[0]):
        c, b = column_sync(cost[q], active[q], registers)
        cyc.append(c)
        busy += b
    return np.array(cyc, dtype=np.float64), busy


def sync_label(cycles: float, busy: float, columns: int, passes: int, what: str = "column") -> tuple[str, float]:
    """Share of column-cycles lost waiting for the slowest column (the bottleneck of these designs)."""
    total = cycles * columns / max(passes, 1)
    lost = max(0.0, 1.0 - busy / total) if total > 0 else 0.0
    return f"{what} sync: slowest of {columns} {what}s sets each step", lost


def result(cycles, units, effectual, events, bottleneck, share, dense=0.0, **detail) -> LayerResult:
    return LayerResult(float(cycles), float(units), float(effectual), events, bottleneck, float(share), detail,
                       float(dense))


def dense_streams(st: tiling.Streams, step: float) -> float:
    """Same-dataflow dense reference: every step of every stream costs ``step`` cycles."""
    return st.combine(np.full(st.idx.shape[0], st.idx.shape[1] * step, dtype=np.float64))
