"""Kim et al. / PNPU ("A 146.52 TOPS/W DNN Learning Processor with Stochastic Coarse-Fine Pruning and Adaptive
Input/Output/Weight Skipping", VLSI'20; "PNPU", IEEE SSC-L 2021) -- a RECONSTRUCTION from the abstracts and a
third-party summary (methods.md section 6; confidence low-medium). Every open choice is a parameter of
``SCFLPConfig`` with its default documented there.

The job fine-tunes one start model (``scflp_models``: the pretrained built-in; for lenet-mnist widened with
planted near-duplicate filters, because a LeNet trained from scratch has none) several times from the same
weights and the same data order: dense (no pruning), and with pruning every ``interval`` iterations under each
coarse step -- stochastic (SCFLP), exhaustive (all pairs) and none (FLP only) -- so the variants differ only in
the coarse step.

- **FLP** (fine level): per layer, zero the smallest-magnitude weights so the layer reaches the current target
  sparsity; the target ramps from 0 to ``sparsity`` with the cubic schedule of gradual pruning (Zhu & Gupta
  2017) between ``ramp_start`` and ``ramp_end`` (fractions of training) [U]. The weight sparsity that results
  is the configured target by construction; it is reported as measured and labelled so.
- **CLP** (coarse level): output channels whose filters are nearly the same as another channel's (cosine
  similarity above ``threshold``) are redundant; of each such pair the one with the smaller L2 norm is removed
  (weights and bias masked to zero), at most ``max_channel_frac`` of a layer's channels, never in the last layer;
  a layer whose budget is used up computes nothing more.
- **SCFLP** (stochastic): CLP compares only a random sample of ``sample`` x (alive channels) channels (at least
  2) per layer and pruning step. ``Pruner.similarity`` is the one place similarities are computed and counts
  them as it computes them, so the two variants' work is measured, not derived from ``sample``.

Adaptive input/output/weight zero skipping (AIOWS), counted on the real tensors of every training iteration:
for every conv/linear layer and each phase -- FP ``Y = W X``, BP ``dX = W^T dY``, WG ``dW = dY X^T`` -- the MACs
that the zeros of each operand let a core skip (``skip_counts``): FP: zero inputs X, zero (pruned) weights, or
outputs of removed channels; BP: zero output gradients dY, zero weights, or input gradients dX that are not
needed (X = 0 after a ReLU, or padding); WG: zero inputs X, zero dY, or gradients of pruned weights. Work is
split by channel over ``lanes`` cores (16 AIOWS DNN cores); the weight sparsity balancer assigns channels to
cores by their non-zero weights (longest-processing-time first) at every pruning step -- used when the skipped
operand is the weights (or WG's pruned gradients), round-robin otherwise -- and a layer phase takes ``max over
lanes`` of its non-skipped MACs (``lane_time``). The **runtime** policy picks, per layer and phase, the operand
that was fastest in the previous counted iteration (what zero counters on the operand streams measure; before
any measurement the operand whose zeros the pruning masks fix) [I]. The **oracle** picks the fastest operand of
the current iteration, which the hardware cannot know: it is reported only as an upper bound, next to the
fixed policies (always input, weight or output). Speed-up = dense time / policy time, per phase and overall.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from . import SOURCES
from .loop import (Checkpoints, FitConfig, Reporter, accuracy, derive_seed, fit, task_data, trainable_layers)
from .pnpu_hw import WeightMemory, efficiency
from .scflp_models import start_model

SOURCE = SOURCES["scflp"][0]
#: the abstracts' figures, each against its own baseline
CLAIMS = {"pruning_work_saving_pct": 99.7, "aiows_throughput_x": 30.1, "weight_sparsity_pct": 90.0,
          "tops_per_w": 146.52, "energy_vs_prior_x": 5.79}
PHASES = ("fp", "bp", "wg")
#: the operand whose zeros each choice skips, per phase
OPERANDS = {"fp": ("input", "weight", "output"), "bp": ("input", "weight", "output"),
            "wg": ("input", "error", "output")}
POLICIES = ("input", "weight", "output")  # fixed policies; in WG 'weight' means the error operand dY
WEIGHT_BASED = {("fp", "weight"), ("bp", "weight"), ("wg", "output")}  # zeros that follow the pruning masks
#: the runtime policy's choice before it has measured anything: the operand the pruning masks fix
FIRST_CHOICE = {p: o for p, o in WEIGHT_BASED}
CLP_VARIANTS = ("stochastic", "exhaustive", "none")


# ---- counting skippable MACs ----------------------------------------------------------------------------
def _as_conv(x: torch.Tensor, w: torch.Tensor):
    """Linear layers as 1x1 convolutions over N rows: x [N, I] -> [N, I, 1, 1], w [O, I] -> [O, I, 1, 1]."""
    if w.ndim == 2:
        x = x.reshape(-1, x.shape[-1])[:, :, None, None]
        w = w[:, :, None, None]
    return x, w


def _cover(length: int, k: int, stride: int) -> tuple[torch.Tensor, int]:
    """How many (output position, tap) pairs read each of ``length`` (padded) input positions; and the outputs."""
    P = (length - k) // stride + 1
    cover = torch.zeros(length, dtype=torch.float64)
    for t in range(k):
        cover[t:t + stride * (P - 1) + 1:stride] += 1
    return cover, P


def skip_counts(x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor | None, stride=1, padding=0,
                removed_out: torch.Tensor | None = None, wmask: torch.Tensor | None = None,
                bp_needed: bool = True) -> dict:
    """Per-unit MAC counts of one layer and one iteration.

    ``x`` [N, I, H, W] input, ``w`` [O, I, KH, KW] weight (or a linear layer's [N, I] / [O, I]), ``dy`` gradient of
    the output, ``removed_out`` bool [O] channels removed by CLP, ``wmask`` the pruning mask (0 = pruned).
    Units: output channels for FP and WG, input channels for BP (the channel each core owns).
    Returns {'dense': {phase: [units]}, (phase, operand): [units] of *skipped* MACs}. A MAC is (n, o, p, i, tap);
    padded taps count as zero inputs (FP, WG) and as unneeded outputs (BP), so every phase has the same dense
    MACs N*O*P*I*K.
    """
    x, w = _as_conv(x.detach(), w.detach())
    O, I, KH, KW = w.shape
    K = KH * KW
    sh, sw = (stride, stride) if isinstance(stride, int) else tuple(stride)
    ph, pw = (padding, padding) if isinstance(padding, int) else tuple(padding)
    N = x.shape[0]
    zx = (x == 0).to(torch.float64)
    if ph or pw:
        zx = F.pad(zx, (pw, pw, ph, ph), value=1.0)  # padding = zero input / unneeded gradient
    # per input channel: sum over n, p, tap of [X zero or padded] = sum over positions of mask x cover, where
    # cover (separable in y and x) counts the (output position, tap) pairs that read a padded input position
    cy, P1 = _cover(zx.shape[-2], KH, sh)
    cx, P2 = _cover(zx.shape[-1], KW, sw)
    zin_i = torch.einsum("niyx,y,x->i", zx, cy, cx)  # [I]
    P = P1 * P2
    zw = (w == 0)
    zw_o = zw.sum(dim=(1, 2, 3)).to(torch.float64)
    zw_i = zw.sum(dim=(0, 2, 3)).to(torch.float64)
    npk = float(N * P)
    dense_o = torch.full((O,), npk * I * K, dtype=torch.float64)
    dense_i = torch.full((I,), npk * O * K, dtype=torch.float64)
    removed = torch.zeros(O, dtype=torch.bool) if removed_out is None else removed_out.to(torch.bool)
    zm_o = zw_o if wmask is None else (wmask.reshape(O, -1) == 0).sum(dim=1).to(torch.float64)
    c = {"dense": {"fp": dense_o, "bp": dense_i if bp_needed else torch.zeros(I, dtype=torch.float64),
                   "wg": dense_o},
         ("fp", "input"): torch.full((O,), float(zin_i.sum()), dtype=torch.float64),
         ("fp", "weight"): npk * zw_o,
         ("fp", "output"): torch.where(removed, dense_o, torch.zeros_like(dense_o)),
         ("wg", "input"): torch.full((O,), float(zin_i.sum()), dtype=torch.float64),
         ("wg", "output"): npk * zm_o}
    if dy is not None:
        dy = dy.detach().reshape(N, O, -1) if dy.ndim != 2 else dy.detach().reshape(-1, O, 1)
        zdy_o = (dy == 0).sum(dim=(0, 2)).to(torch.float64)  # [O]
        c[("wg", "error")] = zdy_o * I * K
        c[("bp", "input")] = torch.full((I,), float(zdy_o.sum()) * K, dtype=torch.float64)
    else:
        c[("wg", "error")] = torch.zeros(O, dtype=torch.float64)
        c[("bp", "input")] = torch.zeros(I, dtype=torch.float64)
    c[("bp", "weight")] = npk * zw_i
    c[("bp", "output")] = O * zin_i
    if not bp_needed:
        for op in OPERANDS["bp"]:
            c[("bp", op)] = torch.zeros(I, dtype=torch.float64)
    return {k: (v.numpy() if torch.is_tensor(v) else {p: t.numpy() for p, t in v.items()}) for k, v in c.items()}


def lane_time(work: np.ndarray, lane_of: np.ndarray, lanes: int) -> float:
    """Time of one layer phase: the most MACs any lane (core) has to do."""
    return float(np.bincount(lane_of, weights=work, minlength=lanes).max(initial=0.0))


def assign_lanes(load: np.ndarray, lanes: int, balance: bool) -> np.ndarray:
    """Channel -> lane. Balanced: longest-processing-time first (heaviest channel to the least-loaded lane, ties
    to the lower lane); otherwise round-robin."""
    n = len(load)
    if not balance:
        return np.arange(n) % lanes
    lane_of = np.zeros(n, dtype=np.int64)
    acc = np.zeros(lanes)
    for c in np.argsort(-np.asarray(load, dtype=np.float64), kind="stable"):
        j = int(np.argmin(acc))
        lane_of[c] = j
        acc[j] += load[c]
    return lane_of


class SkipCounter:
    """Hooks on every conv/linear layer that count, each training iteration, the MACs zero skipping saves.

    Keeps, per layer and phase, the dense time, the time of every fixed operand choice, of the runtime policy
    (the operand fastest in the previous counted iteration) and of the oracle (fastest now: an upper bound)."""

    def __init__(self, module, lanes: int = 16, balance: bool = True, every: int = 1, masks=None, removed=None):
        self.lanes, self.balance, self.every = lanes, balance, max(1, int(every))
        self.layers = trainable_layers(module)
        self.masks = masks if masks is not None else {}
        self.removed = removed if removed is not None else {}
        self.iteration = 0
        self.active = False
        self.handles = []
        self.totals = {n: self._empty() for n, _ in self.layers}
        self.last = {n: dict(FIRST_CHOICE) for n, _ in self.layers}  # the runtime policy's next choice
        self.reassign()
        for name, m in self.layers:
            self.handles.append(m.register_forward_hook(self._fwd(name)))

    def _empty(self):
        t = {"dense_macs": {p: 0.0 for p in PHASES}, "dense_time": {p: 0.0 for p in PHASES},
             "runtime_time": {p: 0.0 for p in PHASES}, "oracle_time": {p: 0.0 for p in PHASES},
             "iterations": 0, "agree": {p: 0 for p in PHASES},
             "chosen": {p: {o: 0 for o in OPERANDS[p]} for p in PHASES},
             "oracle_chosen": {p: {o: 0 for o in OPERANDS[p]} for p in PHASES}}
        for p in PHASES:
            for o in OPERANDS[p]:
                t[f"{p}.{o}.skipped_macs"] = 0.0
                t[f"{p}.{o}.time"] = 0.0
        return t

    def reassign(self):
        """The balancer: lanes by non-zero weights per output channel (FP, WG) and per input channel (BP)."""
        self.lane_o, self.lane_i = {}, {}
        for name, m in self.layers:
            w = m.weight.detach()
            w4 = w if w.ndim == 4 else w[:, :, None, None]
            nz_o = (w4 != 0).sum(dim=(1, 2, 3)).numpy()
            nz_i = (w4 != 0).sum(dim=(0, 2, 3)).numpy()
            self.lane_o[name] = assign_lanes(nz_o, self.lanes, self.balance)
            self.lane_i[name] = assign_lanes(nz_i, self.lanes, self.balance)
        self.dense_lane_o = {n: assign_lanes(np.ones(m.weight.shape[0]), self.lanes, False) for n, m in self.layers}
        self.dense_lane_i = {n: assign_lanes(np.ones(m.weight.shape[1]), self.lanes, False) for n, m in self.layers}

    def step(self, iteration: int):
        """Call before the forward pass of a training iteration: counting is on every ``every``-th one."""
        self.iteration = iteration
        self.active = iteration % self.every == 0

    def _fwd(self, name):
        """Keep the layer's input and catch the gradient of its output (a tensor hook) to count the MACs."""
        def hook(mod, inp, out):
            if not (self.active and mod.training and torch.is_tensor(out) and out.requires_grad):
                return
            x, bp_needed = inp[0].detach(), bool(inp[0].requires_grad)
            conv = isinstance(mod, torch.nn.Conv2d)
            if conv and (mod.groups != 1 or tuple(mod.dilation) != (1, 1) or isinstance(mod.padding, str)):
                return  # outside the counted layer types

            def on_grad(dy):
                c = skip_counts(x, mod.weight, dy, mod.stride if conv else 1, mod.padding if conv else 0,
                                self.removed.get(name), self.masks.get(name), bp_needed=bp_needed)
                self._add(name, c)

            out.register_hook(on_grad)
        return hook

    def _add(self, name, c):
        """One layer's counts of one iteration: the runtime policy pays for the operand it chose from the last
        iteration's times, then remembers this iteration's fastest for the next."""
        t = self.totals[name]
        t["iterations"] += 1
        for p in PHASES:
            lane = self.lane_i[name] if p == "bp" else self.lane_o[name]
            dlane = self.dense_lane_i[name] if p == "bp" else self.dense_lane_o[name]
            dense = c["dense"][p]
            t["dense_macs"][p] += float(dense.sum())
            t["dense_time"][p] += lane_time(dense, dlane, self.lanes)
            times = {}
            for o in OPERANDS[p]:
                skipped = c[(p, o)]
                # the balancer's assignment follows weight sparsity, so it serves the choices that skip weight
                # zeros (and WG's pruned outputs); the others keep the plain round-robin split
                times[o] = lane_time(dense - skipped, lane if (p, o) in WEIGHT_BASED else dlane, self.lanes)
                t[f"{p}.{o}.skipped_macs"] += float(skipped.sum())
                t[f"{p}.{o}.time"] += times[o]
            best = min(OPERANDS[p], key=lambda o: times[o])  # ties: the first operand
            chosen = self.last[name][p]
            t["runtime_time"][p] += times[chosen]
            t["oracle_time"][p] += times[best]
            t["chosen"][p][chosen] += 1
            t["oracle_chosen"][p][best] += 1
            t["agree"][p] += int(times[chosen] == times[best])
            self.last[name][p] = best

    def remove(self):
        for h in self.handles:
            h.remove()

    def summary(self) -> dict:
        """Speed-ups over dense training on the same lanes, per phase and overall: runtime policy, each fixed
        policy, and the oracle (upper bound)."""
        def ratio(a, b):
            return a / b if b else None  # None (JSON null): a phase a layer never runs (first layer's BP)

        def block(ts, p):
            d = sum(t["dense_time"][p] for t in ts)
            dm = sum(t["dense_macs"][p] for t in ts)
            fixed = {pol: sum(t[f"{p}.{OPERANDS[p][i]}.time"] for t in ts) for i, pol in enumerate(POLICIES)}
            n = sum(t["iterations"] for t in ts if t["dense_macs"][p])
            return {"dense_time": d, "dense_macs": dm,
                    "runtime_time": sum(t["runtime_time"][p] for t in ts),
                    "oracle_time": sum(t["oracle_time"][p] for t in ts),
                    "speedup_runtime": ratio(d, sum(t["runtime_time"][p] for t in ts)),
                    "speedup_oracle": ratio(d, sum(t["oracle_time"][p] for t in ts)),
                    **{f"speedup_{pol}_only": ratio(d, f) for pol, f in fixed.items()},
                    **{f"time_{pol}_only": f for pol, f in fixed.items()},
                    **{f"skip_frac_{o}": ratio(sum(t[f"{p}.{o}.skipped_macs"] for t in ts), dm)
                       for o in OPERANDS[p]},
                    "agreement": ratio(sum(t["agree"][p] for t in ts if t["dense_macs"][p]), n),
                    "chosen": {o: sum(t["chosen"][p][o] for t in ts if t["dense_macs"][p]) for o in OPERANDS[p]},
                    "oracle_chosen": {o: sum(t["oracle_chosen"][p][o] for t in ts if t["dense_macs"][p])
                                      for o in OPERANDS[p]}}

        ts = list(self.totals.values())
        out = {"layers": {n: {p: block([t], p) for p in PHASES} for n, t in self.totals.items()},
               "phases": {p: block(ts, p) for p in PHASES},
               "iterations": max((t["iterations"] for t in ts), default=0)}
        tot = {k: sum(out["phases"][p][k] for p in PHASES)
               for k in ("dense_time", "runtime_time", "oracle_time", *(f"time_{pol}_only" for pol in POLICIES))}
        out["overall"] = {**tot, "speedup_runtime": ratio(tot["dense_time"], tot["runtime_time"]),
                          "speedup_oracle": ratio(tot["dense_time"], tot["oracle_time"]),
                          **{f"speedup_{pol}_only": ratio(tot["dense_time"], tot[f"time_{pol}_only"])
                             for pol in POLICIES}}
        return out

    def state(self) -> dict:
        return {"totals": self.totals, "last": self.last}

    def load(self, state: dict):
        self.totals = state["totals"]
        self.last = state["last"]


# ---- pruning ------------------------------------------------------------------------------------------------
@dataclass
class SCFLPConfig:
    """Every open choice of the reconstruction, with its default."""

    sparsity: float = 0.9  # final fine-level weight sparsity of every layer (zeros / weights)
    interval: int = 20  # P: prune every P training iterations
    ramp_start: float = 0.1  # the sparsity target ramps (cubic) from 0 at this fraction of training ...
    ramp_end: float = 0.6  # ... to `sparsity` at this one, then stays
    clp: str = "stochastic"  # the headline coarse step (AIOWS, memory and energy are measured on it)
    compare: bool = True  # also train the other coarse steps (stochastic, exhaustive, none) from the same start
    sample: float = 0.05  # stochastic CLP: share of a layer's alive channels sampled per pruning step (>= 2)
    clp_every: int = 0  # stochastic CLP also runs every N iterations between pruning steps (0: only at them)
    threshold: float = 0.9  # cosine similarity above which two filters are redundant
    max_channel_frac: float = 0.5  # CLP removes at most this share of a layer's output channels
    widen: float = 0.5  # lenet-mnist only: share of each hidden layer's channels given a planted duplicate
    noise: float = 0.1  # the duplicates' noise, relative to the filter's RMS (cosine about 1/sqrt(1+noise^2))
    lanes: int = 16  # cores working on one layer (PNPU: 16 AIOWS DNN cores)
    balance: bool = True  # weight sparsity balancer (else channels go round-robin to cores)
    count_every: int = 1  # count skippable MACs every N iterations
    energy_images: int = 16  # test images run through accel/pnpu.py for energy efficiency (0: skip)
    epochs: int = 2  # fine-tuning epochs from the pretrained start
    batch: int = 64
    lr: float = 5e-4
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.sparsity < 1:
            raise UserError("scflp: sparsity must be in [0, 1)")
        if self.clp not in CLP_VARIANTS:
            raise UserError(f"scflp: clp must be stochastic, exhaustive or none, got {self.clp!r}")
        if self.interval < 1 or self.lanes < 1 or self.epochs < 1:
            raise UserError("scflp: interval, lanes and epochs must be >= 1")
        if not 0 <= self.ramp_start <= self.ramp_end <= 1:
            raise UserError("scflp: need 0 <= ramp_start <= ramp_end <= 1")
        if not 0 < self.sample <= 1:
            raise UserError("scflp: sample must be in (0, 1]")
        if not 0 <= self.widen <= 1 or not 0 <= self.noise <= 10:
            raise UserError("scflp: widen must be in [0, 1] and noise in [0, 10]")
        if self.energy_images < 0 or self.clp_every < 0:
            raise UserError("scflp: energy_images and clp_every must be >= 0")


def target_sparsity(it: int, total: int, cfg: SCFLPConfig) -> float:
    """Cubic ramp (Zhu & Gupta 2017) from 0 at ramp_start to cfg.sparsity at ramp_end (fractions of training)."""
    t0, t1 = cfg.ramp_start * total, cfg.ramp_end * total
    if it <= t0:
        return 0.0
    if it >= t1 or t1 <= t0:
        return cfg.sparsity
    return cfg.sparsity * (1.0 - (1.0 - (it - t0) / (t1 - t0)) ** 3)


class Pruner:
    """FLP + CLP (``clp``: stochastic, exhaustive or none) masks for every conv/linear layer, applied in place
    after each optimiser step; counts the similarity computations it executes and the weight-memory words."""

    def __init__(self, module, cfg: SCFLPConfig, total_iterations: int, clp: str | None = None):
        self.module, self.cfg, self.total = module, cfg, total_iterations
        self.clp = cfg.clp if clp is None else clp
        self.layers = trainable_layers(module)
        self.masks = {n: torch.ones_like(m.weight) for n, m in self.layers}
        self.removed = {n: torch.zeros(m.weight.shape[0], dtype=torch.bool) for n, m in self.layers}
        self.removed_at = {n: torch.full((m.weight.shape[0],), -1, dtype=torch.int64) for n, m in self.layers}
        self.sim = {"computed": 0, "computed_macs": 0, "steps": 0, "coarse_steps": 0, "channels_removed": 0}
        self.max_sim = {n: -1.0 for n, _ in self.layers[:-1]}
        self.memory = WeightMemory(self.layers, self.masks)

    # the masks are applied after every step so pruned weights stay exactly zero
    def apply(self):
        with torch.no_grad():
            for name, m in self.layers:
                m.weight.mul_(self.masks[name])
                if m.bias is not None:
                    m.bias.masked_fill_(self.removed[name], 0.0)

    def prune(self, it: int, fine: bool = True):
        """One pruning step at iteration ``it``: CLP (if on), then FLP to the current target (unless ``fine`` is
        off: a coarse step between pruning steps)."""
        s = target_sparsity(it, self.total, self.cfg)
        if s <= 0:
            return
        self.sim["steps" if fine else "coarse_steps"] += 1
        before = {n: m.clone() for n, m in self.masks.items()}
        clp_read = 0
        if self.clp != "none":
            for name, m in self.layers[:-1]:  # never the classifier
                clp_read += self._clp(name, m, it)
        for name, m in self.layers if fine else ():
            w = (m.weight.detach() * self.masks[name]).abs().flatten()
            n_zero = int(round(s * w.numel()))
            mask = self.masks[name].flatten().clone()
            if n_zero > int((mask == 0).sum()):
                order = torch.sort(w + (mask == 0) * -1.0, stable=True).indices  # already pruned stay pruned
                mask[order[:n_zero]] = 0
                self.masks[name] = mask.reshape(m.weight.shape)
        self.apply()
        self.memory.prune_step(before, self.masks, clp_read, scanned=fine)

    def similarity(self, w: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of the filter pairs (w[a[k]], w[b[k]]): the only place CLP computes similarities,
        so the counter here reads what was executed."""
        wa, wb = w[a], w[b]
        vals = (wa * wb).sum(dim=1) / (wa.norm(dim=1) * wb.norm(dim=1)).clamp_min(1e-30)
        self.sim["computed"] += int(vals.numel())
        self.sim["computed_macs"] += int(vals.numel()) * int(w.shape[1])
        return vals

    def _clp(self, name, m, it) -> int:
        """Coarse step on one layer; returns the weight words it read (the compared filters' stored weights)."""
        O = m.weight.shape[0]
        budget = int(self.cfg.max_channel_frac * O) - int(self.removed[name].sum())
        alive = torch.nonzero(~self.removed[name]).flatten()
        A = len(alive)
        if budget <= 0 or A < 2:
            return 0
        if self.clp == "stochastic":
            S = min(A, max(2, math.ceil(self.cfg.sample * A)))
            rng = np.random.default_rng(derive_seed(self.cfg.seed, "clp", name, it))
            cand = alive[torch.from_numpy(np.sort(rng.choice(A, size=S, replace=False)))]
        else:
            cand = alive
        w = (m.weight.detach() * self.masks[name]).reshape(O, -1)[cand].to(torch.float64)
        iu = torch.triu_indices(len(cand), len(cand), 1)
        vals = self.similarity(w, iu[0], iu[1])
        self.max_sim[name] = max(self.max_sim[name], float(vals.max()))
        norm = w.norm(dim=1)
        above = torch.nonzero(vals > self.cfg.threshold).flatten()
        gone = set()
        for j in above[torch.argsort(-vals[above], stable=True)].tolist():  # most similar pairs first
            if budget <= 0:
                break
            a, b = int(iu[0][j]), int(iu[1][j])
            if a in gone or b in gone:
                continue
            drop = a if norm[a] < norm[b] else b
            gone.add(drop)
            ch = int(cand[drop])
            self.removed[name][ch] = True
            self.removed_at[name][ch] = it
            self.masks[name][ch] = 0
            self.sim["channels_removed"] += 1
            budget -= 1
        return int((w != 0).sum())

    def state(self) -> dict:
        return {"masks": {k: v.clone() for k, v in self.masks.items()},
                "removed": {k: v.clone() for k, v in self.removed.items()},
                "removed_at": {k: v.clone() for k, v in self.removed_at.items()},
                "sim": dict(self.sim), "max_sim": dict(self.max_sim), "memory": self.memory.state()}

    def load(self, st: dict):
        self.masks = {k: v.clone() for k, v in st["masks"].items()}
        self.removed = {k: v.clone() for k, v in st["removed"].items()}
        self.removed_at = {k: v.clone() for k, v in st["removed_at"].items()}
        self.sim = {k: int(v) for k, v in st["sim"].items()}
        self.max_sim = {k: float(v) for k, v in st["max_sim"].items()}
        self.memory.load(st["memory"])

    def sparsity(self) -> dict:
        per = {n: float((m.weight.detach() == 0).double().mean()) for n, m in self.layers}
        tot = sum(int((m.weight.detach() == 0).sum()) for _, m in self.layers)
        num = sum(m.weight.numel() for _, m in self.layers)
        return {"total": tot / num, "layers": per,
                "channels_removed": {n: int(r.sum()) for n, r in self.removed.items()}}


# ---- the job ------------------------------------------------------------------------------------------------
def variants(cfg: SCFLPConfig) -> tuple:
    """The trained variants: dense, the headline coarse step, and (with ``compare``) the other coarse steps."""
    return ("dense", cfg.clp) + (tuple(v for v in CLP_VARIANTS if v != cfg.clp) if cfg.compare else ())


def run(model_name: str, cfg: SCFLPConfig, out_dir=None, resume: bool = False, force: bool = False,
        progress: bool = True, train_limit: int | None = None, test_limit: int | None = None,
        val_size: int | None = None, stop_after: int | None = None) -> dict:
    """Fine-tune the start model once per variant (``variants``) from the same weights and data order, one stage
    per epoch, checkpointed (weights, optimiser, masks, counters)."""
    data = task_data(model_name, cfg.seed, train_limit=train_limit, val_size=val_size, test_limit=test_limit)
    config = {"method": "scflp", "model": model_name, **asdict(cfg), "train_limit": train_limit,
              "test_limit": test_limit, "val_size": val_size}
    ck = Checkpoints(out_dir, config, resume=resume, force=force)
    per_epoch = math.ceil(len(data.x_train) / cfg.batch)
    total = per_epoch * cfg.epochs
    computed = [0]

    def killed_check():
        computed[0] += 1
        if stop_after is not None and computed[0] >= stop_after:
            raise KeyboardInterrupt(f"simulated kill after {computed[0]} stages")

    out = {}
    with Reporter(progress) as rep:
        rep.note(f"[bold]scflp[/] {model_name}: {data.note}; {cfg.epochs} epochs of fine-tuning per variant "
                 f"({', '.join(variants(cfg))}), prune every {cfg.interval} iterations to {100 * cfg.sparsity:.0f}%")
        for variant in variants(cfg):
            module, planted = start_model(model_name, cfg.widen, cfg.noise, cfg.seed)
            if not out:
                out["start"] = {"accuracy": accuracy(module, data.x_test, data.y_test, data.logprob),
                                "planted": planted, "widths": {n: int(m.weight.shape[0])
                                                               for n, m in trainable_layers(module)}}
            opt = torch.optim.Adam(module.parameters(), lr=cfg.lr)
            pruner = None if variant == "dense" else Pruner(module, cfg, total, clp=variant)
            counter = SkipCounter(module, cfg.lanes, cfg.balance, cfg.count_every, pruner.masks, pruner.removed) \
                if variant == cfg.clp else None
            info = None
            for epoch in range(1, cfg.epochs + 1):
                name = f"{variant}/epoch{epoch}"
                step0 = (epoch - 1) * per_epoch

                def after_step(it, pruner=pruner, counter=counter):
                    if pruner is None:
                        return
                    pruner.memory.iteration()
                    pruning = it % cfg.interval == 0
                    if pruning or (pruner.clp == "stochastic" and cfg.clp_every and it % cfg.clp_every == 0):
                        pruner.prune(it, fine=pruning)
                        if counter is not None:
                            counter.masks, counter.removed = pruner.masks, pruner.removed
                            counter.reassign()
                    else:
                        pruner.apply()
                    if counter is not None:
                        counter.step(it + 1)

                def run_epoch(step0=step0, epoch=epoch, module=module, opt=opt, pruner=pruner, counter=counter,
                              after_step=after_step):
                    if counter is not None:
                        counter.step(step0 + 1)
                    # the stage given to fit sets the data order: the same for every variant
                    h = fit(module, data, FitConfig(steps=per_epoch, batch=cfg.batch, lr=cfg.lr), seed=cfg.seed,
                            stage=f"epoch{epoch}", after_step=after_step, progress=rep, optimizer=opt, step0=step0)
                    val = accuracy(module, data.x_val, data.y_val, data.logprob)
                    test = accuracy(module, data.x_test, data.y_test, data.logprob)
                    payload = {"model": {k: v.detach().clone() for k, v in module.state_dict().items()},
                               "optimizer": opt.state_dict()}
                    info = {**h, "epoch": epoch, "val": val, "test": test}
                    if pruner is not None:
                        payload["pruner"] = pruner.state()
                        sp = pruner.sparsity()
                        info.update({"weight_sparsity": sp["total"], "channels_removed": sp["channels_removed"],
                                     "similarity": dict(pruner.sim)})
                    if counter is not None:
                        payload["counter"] = counter.state()
                    return payload, info

                def restore(t, module=module, opt=opt, pruner=pruner, counter=counter):
                    module.load_state_dict(t["model"])
                    opt.load_state_dict(t["optimizer"])
                    if pruner is not None:
                        pruner.load(t["pruner"])
                    if counter is not None:
                        counter.load(t["counter"])
                        counter.masks, counter.removed = pruner.masks, pruner.removed
                        counter.reassign()

                info = ck.stage(name, run_epoch, restore)
                if name in ck.ran:
                    killed_check()
                extra = (f"  weight sparsity {100 * info['weight_sparsity']:.1f}%  channels removed "
                         f"{sum(info['channels_removed'].values())}" if "weight_sparsity" in info else "")
                rep.note(f"{name}: loss {info['loss']:.4f}  val {info['val']:.2f}%  test {info['test']:.2f}%{extra}")
            if counter is not None:
                counter.remove()
            out[variant] = {"info": info, "module": module, "pruner": pruner, "counter": counter}
    pnpu = {}
    if cfg.energy_images:
        x = data.x_test[:cfg.energy_images]
        pnpu = {"dense-trained": efficiency(out["dense"]["module"], x), "scflp": efficiency(out[cfg.clp]["module"], x)}
    result = summarise(model_name, cfg, out, data, ck, pnpu)
    ck.write_json("result.json", result)
    return result


def planted_outcome(removed: dict, planted: dict) -> dict:
    """Of the planted duplicate pairs: how many lost exactly one channel, both, or none; and how many removed
    channels are in no planted pair."""
    o = {"pairs": 0, "one_removed": 0, "both_removed": 0, "missed": 0, "outside_pairs": 0}
    for layer, r in removed.items():
        pairs = torch.tensor(planted.get(layer, []), dtype=torch.int64).reshape(-1, 2)
        hits = r[pairs].sum(dim=1)
        in_pair = torch.zeros_like(r)
        in_pair[pairs.flatten()] = True
        o["pairs"] += len(pairs)
        o["one_removed"] += int((hits == 1).sum())
        o["both_removed"] += int((hits == 2).sum())
        o["missed"] += int((hits == 0).sum())
        o["outside_pairs"] += int((r & ~in_pair).sum())
    return o


def agreement(a: dict, b: dict) -> dict:
    """Which channels two variants removed: in both, only in the first, only in the second; Jaccard index."""
    both = sum(int((a[n] & b[n]).sum()) for n in a)
    only_a = sum(int((a[n] & ~b[n]).sum()) for n in a)
    only_b = sum(int((~a[n] & b[n]).sum()) for n in a)
    union = both + only_a + only_b
    return {"both": both, "only_first": only_a, "only_second": only_b, "jaccard": both / union if union else None}


def correct_flags(module, data) -> np.ndarray:
    """Per test sample, whether the top-1 prediction is right: the input of paired comparisons."""
    was = module.training
    module.eval()
    with torch.no_grad():
        pred = torch.cat([data.logprob(module(data.x_test[i:i + 2000])).argmax(1)
                          for i in range(0, len(data.x_test), 2000)])
    module.train(was)
    return (pred == data.y_test).numpy()


def paired(flags: dict, pairs) -> dict:
    """Accuracy change var - base in points with a paired bootstrap 95% interval and the exact McNemar p."""
    from ..stats import mcnemar_p, paired_bootstrap

    res = {}
    for var, base in pairs:
        if var in flags and base in flags:
            a, b = flags[base], flags[var]
            lo, hi = paired_bootstrap(a, b, seed=0)
            res[f"{var}-{base}"] = {"diff": 100 * float(b.mean() - a.mean()), "ci": [100 * lo, 100 * hi],
                                    "mcnemar_p": mcnemar_p(int((a & ~b).sum()), int((~a & b).sum()))}
    return res


def summarise(model_name: str, cfg: SCFLPConfig, out: dict, data, ck: Checkpoints, pnpu: dict) -> dict:
    from .. import results
    from ..stats import wilson

    n_test = len(data.x_test)
    planted = out["start"]["planted"]
    vres = {}
    for v in variants(cfg):
        info, pruner = out[v]["info"], out[v]["pruner"]
        k = int(round(info["test"] * n_test / 100.0))
        lo, hi = wilson(k, n_test)
        d = {"accuracy": info["test"], "accuracy_ci": [100 * lo, 100 * hi], "n_test": n_test,
             "val_accuracy": info["val"]}
        if pruner is not None:
            sp = pruner.sparsity()
            structured = sum(int(r.sum()) * pruner.masks[n][0].numel() for n, r in pruner.removed.items())
            d.update({"weight_sparsity": sp["total"], "layer_sparsity": sp["layers"],
                      "structured_zero_frac": structured / sum(m.numel() for m in pruner.masks.values()),
                      "channels_removed": sp["channels_removed"],
                      "channels_removed_total": pruner.sim["channels_removed"],
                      "removed": {n: torch.nonzero(r).flatten().tolist() for n, r in pruner.removed.items()},
                      "removed_at": {n: [int(x) for x in t[t >= 0].tolist()] for n, t in pruner.removed_at.items()},
                      "similarity_computations": pruner.sim["computed"],
                      "similarity_macs": pruner.sim["computed_macs"], "pruning_steps": pruner.sim["steps"],
                      "coarse_only_steps": pruner.sim["coarse_steps"],
                      "max_similarity": dict(pruner.max_sim), "planted": planted_outcome(pruner.removed, planted),
                      "weight_memory": pruner.memory.summary()})
        vres[v] = d
    agree = None
    if "stochastic" in out and "exhaustive" in out:
        agree = agreement(out["stochastic"]["pruner"].removed, out["exhaustive"]["pruner"].removed)
        s, e = vres["stochastic"]["similarity_computations"], vres["exhaustive"]["similarity_computations"]
        agree["computation_saving"] = 1.0 - s / e if e else None
    flags = {v: correct_flags(out[v]["module"], data) for v in variants(cfg)}
    pairs = paired(flags, [("stochastic", "exhaustive"), ("stochastic", "none"), ("exhaustive", "none"),
                           (cfg.clp, "dense")])
    sk = out[cfg.clp]["counter"].summary()
    head = vres[cfg.clp]
    method = f"scflp:sparsity={cfg.sparsity},interval={cfg.interval},clp={cfg.clp},sample={cfg.sample}"
    rows = []
    for v, d in vres.items():
        m = "dense-training" if v == "dense" else f"scflp:clp={v},sparsity={cfg.sparsity},interval={cfg.interval}"
        rows.append(results.row(model_name, "*", "accuracy", d["accuracy"], method=m))
        if v != "dense":
            rows += [results.row(model_name, "*", "zero_value_frac", d["weight_sparsity"], method=m),
                     results.row(model_name, "*", "clp_channels_removed", d["channels_removed_total"], method=m),
                     results.row(model_name, "*", "clp_similarity_computations", d["similarity_computations"],
                                 method=m)]
    for p, d in sk["phases"].items():
        rows.append(results.row(model_name, "*", f"speedup_{p}", d["speedup_runtime"], method=method, accel="pnpu"))
    rows.append(results.row(model_name, "*", "speedup", sk["overall"]["speedup_runtime"], method=method,
                            accel="pnpu"))
    rows.append(results.row(model_name, "*", "speedup_oracle_upper_bound", sk["overall"]["speedup_oracle"],
                            method=method, accel="pnpu"))
    if head["weight_memory"]["saved_frac"] is not None:
        rows.append(results.row(model_name, "*", "weight_memory_access_saving", head["weight_memory"]["saved_frac"],
                                method=method, accel="pnpu"))
    if pnpu:
        rows.append(results.row(model_name, "*", "tops_per_w", pnpu["scflp"]["pnpu"]["tops_per_w"], method=method,
                                accel="pnpu", format=pnpu["scflp"]["format"]))
    return {
        "method": "scflp", "source": SOURCE, "model": model_name, "data": data.note, "config": asdict(cfg),
        "start": out["start"], "variants": vres, "headline": cfg.clp, "agreement": agree,
        "paired": pairs,
        "zero_skipping": sk, "pnpu_efficiency": pnpu, "claims": CLAIMS,
        "stages_run": list(ck.ran), "stages_loaded": list(ck.loaded), "rows": rows,
    }


# ---- what the CLI prints ------------------------------------------------------------------------------------
def _f(x, fmt="{:.2f}"):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _pct(x, fmt="{:.2f}"):
    return _f(None if x is None else 100 * x, fmt)


NAMES = {"dense": "dense (no pruning)", "stochastic": "stochastic CLP (SCFLP)", "exhaustive": "exhaustive CLP",
         "none": "no CLP (FLP only)"}


def render(r: dict) -> list:
    """The run's tables and notes for the terminal: strings and ``rich`` tables, in print order."""
    from rich.table import Table

    cfg, st, vs = r["config"], r["start"], r["variants"]
    out = [f"[bold]SCFLP on {r['model']}[/] -- reconstruction from the abstracts (Kim et al. VLSI'20 / PNPU); "
           f"{r['data']}"]
    n_pl = sum(len(p) for p in st["planted"].values())
    widths = ", ".join(f"{k} {v}" for k, v in st["widths"].items())
    out.append("start: the pretrained model" + (f" widened with {n_pl} planted near-duplicate filters (Net2Wider, "
                                                f"noise {cfg['noise']}; widths {widths})" if n_pl else "")
               + f", test accuracy {st['accuracy']:.2f}% before fine-tuning; every variant fine-tunes "
               f"{cfg['epochs']} epochs from it on the same data order")
    t = Table(title=f"coarse step on the same start: prune every {cfg['interval']} iterations, cosine > "
                    f"{cfg['threshold']}, stochastic sample {cfg['sample']}"
                    + (f", stochastic CLP also every {cfg['clp_every']} iterations" if cfg["clp_every"] else ""))
    for col in ("variant", "channels removed", "planted pairs: one / both / missed", "removed outside pairs",
                "similarity computations", "acc % [95% CI]", "n", "weight sparsity %"):
        t.add_column(col, justify="left" if col == "variant" else "right", no_wrap=col == "variant")
    for v, d in vs.items():
        if v == "dense":
            t.add_row(NAMES[v], "-", "-", "-", "-", f"{d['accuracy']:.2f} [{d['accuracy_ci'][0]:.2f}, "
                      f"{d['accuracy_ci'][1]:.2f}]", str(d["n_test"]), "-")
            continue
        p = d["planted"]
        t.add_row(NAMES[v], str(d["channels_removed_total"]),
                  f"{p['one_removed']} / {p['both_removed']} / {p['missed']} of {p['pairs']}" if p["pairs"] else "-",
                  str(p["outside_pairs"]), f"{d['similarity_computations']:,}",
                  f"{d['accuracy']:.2f} [{d['accuracy_ci'][0]:.2f}, {d['accuracy_ci'][1]:.2f}]", str(d["n_test"]),
                  f"{100 * d['weight_sparsity']:.1f}")
    out.append(t)
    a = r["agreement"]
    if a:
        out.append(f"stochastic vs exhaustive: {_pct(a['computation_saving'])}% "
                   f"fewer similarity computations, as executed (paper: {r['claims']['pruning_work_saving_pct']}% "
                   f"less pruning work than its previous WP algorithm); channels removed by both {a['both']}, only "
                   f"stochastic {a['only_first']}, only exhaustive {a['only_second']} (Jaccard {_f(a['jaccard'])})")
    if r["paired"]:
        out.append("accuracy changes on the same test samples (paired bootstrap 95% interval, exact McNemar p): "
                   + "; ".join(f"{k.replace('-', ' - ')} {d['diff']:+.2f} points [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]"
                               f" p={d['mcnemar_p']:.3g}" for k, d in r["paired"].items()))
    h = vs[r["headline"]]
    reached = h["weight_sparsity"] >= cfg["sparsity"] - 0.005  # CLP's removed channels may add to the target
    out.append(f"weight sparsity {100 * h['weight_sparsity']:.1f}% measured; configured target "
               f"{100 * cfg['sparsity']:.0f}% " + ("(FLP prunes every layer to it by construction)" if reached else
                                                  "not reached: the run ended before the ramp did")
               + f"; of all weights {100 * h['structured_zero_frac']:.1f}% sit in channels CLP removed")
    sk = r["zero_skipping"]
    t = Table(title=f"AIOWS on a PNPU lane model ({cfg['lanes']} cores, balancer {'on' if cfg['balance'] else 'off'}), "
                    f"{NAMES[r['headline']]}, {sk['iterations']} training iterations: speed-up over dense training")
    for col in ("policy", "FP  Y = W X", "BP  dX = W^T dY", "WG  dW = dY X^T", "overall"):
        t.add_column(col, justify="left" if col == "policy" else "right", no_wrap=True)
    pols = [("runtime (previous iteration's best)", "speedup_runtime"),
            *((f"{pol} only", f"speedup_{pol}_only") for pol in POLICIES),
            ("oracle (upper bound)", "speedup_oracle")]
    for label, key in pols:
        t.add_row(label, *(_f(sk["phases"][p][key], "{:.2f}x") for p in PHASES), _f(sk["overall"][key], "{:.2f}x"),
                  style="bold" if key == "speedup_runtime" else ("dim" if key == "speedup_oracle" else None))
    out.append(t)
    out.append("runtime choice = oracle's in " + ", ".join(
        f"{p.upper()} {_pct(sk['phases'][p]['agreement'], '{:.1f}')}%"
        for p in PHASES) + " of layer-iterations. Operands: FP input = zero X; BP input = zero dY, output = dX not "
        "needed; WG 'weight' column = zero dY, output = gradients of pruned weights. Paper: 30.1x throughput over "
        "a prior learning processor [1] -- a different baseline (a whole chip), not dense training on the same lanes")
    m = h["weight_memory"]
    t = Table(title="weight memory (words, non-zero weights, from the real masks): separate pruning unit vs "
                    "PNPU's weight-memory-shared pruning unit [I]")
    t.add_column("accesses", justify="left")
    t.add_column("words", justify="right")
    for label, key in (("training (FP, BP reads; WG read + write)", "train"),
                       ("pruning: FLP scan reads", "prune_flp_read"), ("pruning: CLP filter reads", "prune_clp_read"),
                       ("pruning: write-back of new zeros", "prune_write"),
                       ("separate pruning unit: total", "separate_unit_total"),
                       ("shared pruning unit: total", "shared_unit_total")):
        t.add_row(label, f"{m[key]:,}")
    out.append(t)
    out.append(f"the shared pruning unit saves {m['saved']:,} weight-memory words, "
               f"{_pct(m['saved_frac'])}% of the separate "
               f"unit's total (the share follows mostly from pruning every {cfg['interval']} iterations)")
    e = r["pnpu_efficiency"]
    if e:
        t = Table(title=f"inference energy efficiency from accel/pnpu.py ({e['scflp']['format']}, "
                        f"{e['scflp']['images']} test images; PE array + SRAM + DRAM at the toolkit's 28 nm basis)")
        for col in ("network", "design", "TOPS/W", "TOPS/W compute only", "zero-skipping speed-up"):
            t.add_column(col, justify="left" if col in ("network", "design") else "right")
        for net in ("dense-trained", "scflp"):
            for acc in ("dense", "pnpu"):
                x = e[net][acc]
                t.add_row(net, acc, _f(x["tops_per_w"], "{:.3g}"), _f(x["tops_per_w_compute"], "{:.3g}"),
                          _f(e[net]["skip_speedup"], "{:.2f}x") if acc == "pnpu" else "-")
        out.append(t)
        out.append(f"paper (abstracts, different baselines): {r['claims']['tops_per_w']} TOPS/W for the chip "
                   f"(VLSI'20; learning, sparsity and precision not stated), {r['claims']['energy_vs_prior_x']}x "
                   f"the efficiency and {r['claims']['aiows_throughput_x']}x the throughput of a prior learning "
                   f"processor [1]; not comparable one to one with an inference model against a dense design")
    return out

__all__ = ["SCFLPConfig", "Pruner", "SkipCounter", "skip_counts", "lane_time", "assign_lanes", "run", "render",
           "target_sparsity", "variants", "planted_outcome", "agreement"]
