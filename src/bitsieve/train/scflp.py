"""Kim et al. / PNPU ("A 146.52 TOPS/W DNN Learning Processor with Stochastic Coarse-Fine Pruning and Adaptive
Input/Output/Weight Skipping", VLSI'20; "PNPU", IEEE SSC-L 2021) -- a RECONSTRUCTION from the abstracts and a
third-party summary (methods.md section 6; confidence low-medium). Every open choice is a parameter of
``SCFLPConfig`` with its default documented there.

Pruning during training (every ``interval`` iterations):

- **FLP** (fine level): per layer, zero the smallest-magnitude weights so the layer reaches the current target
  sparsity; the target ramps from 0 to ``sparsity`` with the cubic schedule of gradual pruning (Zhu & Gupta
  2017) between ``ramp_start`` and ``ramp_end`` (fractions of training) [U].
- **CLP** (coarse level): output channels whose filters are nearly the same as another channel's (cosine
  similarity above ``threshold``) are redundant; of each such pair the one with the smaller L2 norm is removed
  (weights and bias masked to zero), at most ``max_channel_frac`` of a layer's channels, never in the last layer.
- **SCFLP** (stochastic): CLP computes similarities only among a random sample of ``sample`` x (alive
  channels) channels (at least 2) per layer and pruning step, instead of all pairs; both counts are kept so the
  saving against exhaustive CLP at the same steps is measured (the abstract: 99.7% less pruning work).

Adaptive input/output/weight zero skipping (AIOWS), counted on the real tensors of every training iteration:
for every conv/linear layer and each phase -- FP ``Y = W X``, BP ``dX = W^T dY``, WG ``dW = dY X^T`` -- the MACs
that the zeros of each operand let a core skip (``skip_counts``): FP: zero inputs X, zero (pruned) weights, or
outputs of removed channels; BP: zero output gradients dY, zero weights, or input gradients dX that are not
needed (X = 0 after a ReLU, or padding); WG: zero inputs X, zero dY, or gradients of pruned weights. Work is
split by channel over ``lanes`` cores (16 AIOWS DNN cores); the weight sparsity balancer assigns channels to
cores by their non-zero weights (longest-processing-time first) at every pruning step -- used when the skipped
operand is the weights (or WG's pruned gradients), round-robin otherwise -- and a layer phase takes ``max over
lanes`` of its non-skipped MACs (``lane_time``). The adaptive policy picks, per layer, phase and
iteration, the operand with the shortest time [I]; fixed policies (always input, weight or output) are reported
next to it. Speed-up = dense time / adaptive time, per phase and overall.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .loop import (Checkpoints, FitConfig, Reporter, accuracy, derive_seed, fit, task_data, trainable_layers)

SOURCE = ("Kim et al. VLSI'20 / PNPU SSC-L'21, reconstructed from the abstracts and a third-party summary: "
          "methods.md section 6 [I, low-medium]")
CLAIMS = {"pruning_work_saving_pct": 99.7, "aiows_throughput_x": 30.1, "weight_sparsity_pct": 90.0}
PHASES = ("fp", "bp", "wg")
#: the operand whose zeros each choice skips, per phase
OPERANDS = {"fp": ("input", "weight", "output"), "bp": ("input", "weight", "output"),
            "wg": ("input", "error", "output")}
POLICIES = ("input", "weight", "output")
WEIGHT_BASED = {("fp", "weight"), ("bp", "weight"), ("wg", "output")}  # zeros that follow the pruning masks  # fixed policies; in WG 'weight' means the error operand dY


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

    Keeps, per layer and phase, the dense time and the time of every operand choice and of the adaptive choice
    (``lane_time`` with the current lane assignment), plus the skipped MACs per operand."""

    def __init__(self, module, lanes: int = 16, balance: bool = True, every: int = 1, masks=None, removed=None):
        self.lanes, self.balance, self.every = lanes, balance, max(1, int(every))
        self.layers = trainable_layers(module)
        self.masks = masks if masks is not None else {}
        self.removed = removed if removed is not None else {}
        self.first = self.layers[0][0] if self.layers else None
        self.iteration = 0
        self.active = False
        self.handles = []
        self.totals = {n: self._empty() for n, _ in self.layers}
        self.reassign()
        for name, m in self.layers:
            self.handles.append(m.register_forward_hook(self._fwd(name)))

    def _empty(self):
        t = {"dense_macs": {p: 0.0 for p in PHASES}, "dense_time": {p: 0.0 for p in PHASES},
             "adaptive_time": {p: 0.0 for p in PHASES}, "iterations": 0,
             "chosen": {p: {o: 0 for o in OPERANDS[p]} for p in PHASES}}
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
        t = self.totals[name]
        t["iterations"] += 1
        for p in PHASES:
            lane = self.lane_i[name] if p == "bp" else self.lane_o[name]
            dlane = self.dense_lane_i[name] if p == "bp" else self.dense_lane_o[name]
            dense = c["dense"][p]
            t["dense_macs"][p] += float(dense.sum())
            t["dense_time"][p] += lane_time(dense, dlane, self.lanes)
            best, best_op = math.inf, None
            for o in OPERANDS[p]:
                skipped = c[(p, o)]
                # the balancer's assignment follows weight sparsity, so it serves the choices that skip weight
                # zeros (and WG's pruned outputs); the others keep the plain round-robin split
                tm = lane_time(dense - skipped, lane if (p, o) in WEIGHT_BASED else dlane, self.lanes)
                t[f"{p}.{o}.skipped_macs"] += float(skipped.sum())
                t[f"{p}.{o}.time"] += tm
                if tm < best:
                    best, best_op = tm, o
            t["adaptive_time"][p] += best
            t["chosen"][p][best_op] += 1

    def remove(self):
        for h in self.handles:
            h.remove()

    def summary(self) -> dict:
        """Speed-ups over dense training (same lanes), per phase and overall, adaptive and fixed policies."""
        def ratio(a, b):
            return a / b if b else None  # None (JSON null): a phase a layer never runs (first layer's BP)

        out = {"layers": {}, "phases": {}}
        for name, t in self.totals.items():
            out["layers"][name] = {
                p: {"dense_macs": t["dense_macs"][p],
                    **{f"skip_frac_{o}": ratio(t[f"{p}.{o}.skipped_macs"], t["dense_macs"][p]) for o in OPERANDS[p]},
                    "speedup_adaptive": ratio(t["dense_time"][p], t["adaptive_time"][p]),
                    "chosen": t["chosen"][p]} for p in PHASES}
        total_dense = total_adapt = 0.0
        fixed_total = {pol: 0.0 for pol in POLICIES}
        for p in PHASES:
            d = sum(t["dense_time"][p] for t in self.totals.values())
            a = sum(t["adaptive_time"][p] for t in self.totals.values())
            fixed = {pol: sum(t[f"{p}.{OPERANDS[p][i]}.time"] for t in self.totals.values())
                     for i, pol in enumerate(POLICIES)}
            out["phases"][p] = {"dense_time": d, "adaptive_time": a, "speedup_adaptive": ratio(d, a),
                                **{f"speedup_{pol}_only": ratio(d, f) for pol, f in fixed.items()},
                                "dense_macs": sum(t["dense_macs"][p] for t in self.totals.values()),
                                **{f"skip_frac_{o}": ratio(sum(t[f"{p}.{o}.skipped_macs"] for t in self.totals.values()),
                                                           sum(t["dense_macs"][p] for t in self.totals.values()))
                                   for o in OPERANDS[p]}}
            total_dense += d
            total_adapt += a
            for pol in POLICIES:
                fixed_total[pol] += fixed[pol]
        out["overall"] = {"dense_time": total_dense, "adaptive_time": total_adapt,
                          "speedup_adaptive": ratio(total_dense, total_adapt),
                          **{f"speedup_{pol}_only": ratio(total_dense, f) for pol, f in fixed_total.items()}}
        return out

    def state(self) -> dict:
        return {"totals": self.totals}

    def load(self, state: dict):
        self.totals = state["totals"]


# ---- pruning ------------------------------------------------------------------------------------------------
@dataclass
class SCFLPConfig:
    """Every open choice of the reconstruction, with its default."""

    sparsity: float = 0.9  # final fine-level weight sparsity of every layer (zeros / weights)
    interval: int = 100  # P: prune every P training iterations
    ramp_start: float = 0.1  # the sparsity target ramps (cubic) from 0 at this fraction of training ...
    ramp_end: float = 0.6  # ... to `sparsity` at this one, then stays
    clp: str = "stochastic"  # stochastic | exhaustive | none
    sample: float = 0.05  # stochastic CLP: share of a layer's alive channels sampled per pruning step (>= 2)
    threshold: float = 0.9  # cosine similarity above which two filters are redundant
    max_channel_frac: float = 0.5  # CLP removes at most this share of a layer's output channels
    lanes: int = 16  # cores working on one layer (PNPU: 16 AIOWS DNN cores)
    balance: bool = True  # weight sparsity balancer (else channels go round-robin to cores)
    count_every: int = 1  # count skippable MACs every N iterations
    epochs: int = 10
    batch: int = 64
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.sparsity < 1:
            raise UserError("scflp: sparsity must be in [0, 1)")
        if self.clp not in ("stochastic", "exhaustive", "none"):
            raise UserError(f"scflp: clp must be stochastic, exhaustive or none, got {self.clp!r}")
        if self.interval < 1 or self.lanes < 1 or self.epochs < 1:
            raise UserError("scflp: interval, lanes and epochs must be >= 1")
        if not 0 <= self.ramp_start <= self.ramp_end <= 1:
            raise UserError("scflp: need 0 <= ramp_start <= ramp_end <= 1")
        if not 0 < self.sample <= 1:
            raise UserError("scflp: sample must be in (0, 1]")


def target_sparsity(it: int, total: int, cfg: SCFLPConfig) -> float:
    """Cubic ramp (Zhu & Gupta 2017) from 0 at ramp_start to cfg.sparsity at ramp_end (fractions of training)."""
    t0, t1 = cfg.ramp_start * total, cfg.ramp_end * total
    if it <= t0:
        return 0.0
    if it >= t1 or t1 <= t0:
        return cfg.sparsity
    return cfg.sparsity * (1.0 - (1.0 - (it - t0) / (t1 - t0)) ** 3)


class Pruner:
    """FLP + (stochastic) CLP masks for every conv/linear layer, applied in place after each optimiser step."""

    def __init__(self, module, cfg: SCFLPConfig, total_iterations: int):
        self.module, self.cfg, self.total = module, cfg, total_iterations
        self.layers = trainable_layers(module)
        self.masks = {n: torch.ones_like(m.weight) for n, m in self.layers}
        self.removed = {n: torch.zeros(m.weight.shape[0], dtype=torch.bool) for n, m in self.layers}
        self.sim = {"computed": 0, "exhaustive": 0, "computed_macs": 0, "exhaustive_macs": 0, "steps": 0,
                    "channels_removed": 0}

    # the masks are applied after every step so pruned weights stay exactly zero
    def apply(self):
        with torch.no_grad():
            for name, m in self.layers:
                m.weight.mul_(self.masks[name])
                if m.bias is not None:
                    m.bias.masked_fill_(self.removed[name], 0.0)

    def prune(self, it: int):
        """One pruning step at iteration ``it``: CLP (if on), then FLP to the current target."""
        s = target_sparsity(it, self.total, self.cfg)
        if s <= 0:
            return
        self.sim["steps"] += 1
        if self.cfg.clp != "none":
            for name, m in self.layers[:-1]:  # never the classifier
                self._clp(name, m, it)
        for name, m in self.layers:
            w = (m.weight.detach() * self.masks[name]).abs().flatten()
            n_zero = int(round(s * w.numel()))
            mask = self.masks[name].flatten().clone()
            if n_zero > int((mask == 0).sum()):
                order = torch.sort(w + (mask == 0) * -1.0, stable=True).indices  # already pruned stay pruned
                mask[order[:n_zero]] = 0
                self.masks[name] = mask.reshape(m.weight.shape)
        self.apply()

    def _clp(self, name, m, it):
        O = m.weight.shape[0]
        alive = torch.nonzero(~self.removed[name]).flatten()
        A = len(alive)
        fan_in = m.weight[0].numel()
        self.sim["exhaustive"] += A * (A - 1) // 2
        self.sim["exhaustive_macs"] += A * (A - 1) // 2 * fan_in
        budget = int(self.cfg.max_channel_frac * O) - int(self.removed[name].sum())
        if A < 2:
            return
        if self.cfg.clp == "stochastic":
            S = min(A, max(2, math.ceil(self.cfg.sample * A)))
            rng = np.random.default_rng(derive_seed(self.cfg.seed, "clp", name, it))
            cand = alive[torch.from_numpy(np.sort(rng.choice(A, size=S, replace=False)))]
        else:
            cand = alive
        S = len(cand)
        self.sim["computed"] += S * (S - 1) // 2
        self.sim["computed_macs"] += S * (S - 1) // 2 * fan_in
        if budget <= 0:
            return
        w = (m.weight.detach() * self.masks[name]).reshape(O, -1)[cand].to(torch.float64)
        norm = w.norm(dim=1)
        sim = (w @ w.T) / (norm[:, None] * norm[None, :]).clamp_min(1e-30)
        iu = torch.triu_indices(S, S, 1)
        vals = sim[iu[0], iu[1]]
        order = torch.argsort(-vals, stable=True)
        gone = set()
        for j in order.tolist():
            if vals[j] <= self.cfg.threshold or budget <= 0:
                break
            a, b = int(iu[0][j]), int(iu[1][j])
            if a in gone or b in gone:
                continue
            drop = a if norm[a] < norm[b] else b
            gone.add(drop)
            ch = int(cand[drop])
            self.removed[name][ch] = True
            self.masks[name][ch] = 0
            self.sim["channels_removed"] += 1
            budget -= 1

    def state(self) -> dict:
        return {"masks": {k: v.clone() for k, v in self.masks.items()},
                "removed": {k: v.clone() for k, v in self.removed.items()}, "sim": dict(self.sim)}

    def load(self, st: dict):
        self.masks = {k: v.clone() for k, v in st["masks"].items()}
        self.removed = {k: v.clone() for k, v in st["removed"].items()}
        self.sim = {k: int(v) for k, v in st["sim"].items()}

    def sparsity(self) -> dict:
        per = {n: float((m.weight.detach() == 0).double().mean()) for n, m in self.layers}
        tot = sum(int((m.weight.detach() == 0).sum()) for _, m in self.layers)
        num = sum(m.weight.numel() for _, m in self.layers)
        return {"total": tot / num, "layers": per,
                "channels_removed": {n: int(r.sum()) for n, r in self.removed.items()}}


# ---- the job ------------------------------------------------------------------------------------------------
def fresh_model(model_name: str, seed: int):
    """The built-in architecture with a seeded random initialisation (training from scratch; the pretrained
    weights are not read)."""
    from ..zoo import lenet, mtcnn

    arch = {"lenet-mnist": lenet.LeNet, **{f"mtcnn-{k}": v for k, v in mtcnn.NETS.items()}}
    if model_name not in arch:
        raise UserError(f"scflp trains from scratch and knows the architectures of {', '.join(arch)}; "
                        f"got {model_name!r}")
    torch.manual_seed(derive_seed(seed, "init"))
    return arch[model_name]().float().train()


def run(model_name: str, cfg: SCFLPConfig, out_dir=None, resume: bool = False, force: bool = False,
        progress: bool = True, train_limit: int | None = None, test_limit: int | None = None,
        val_size: int | None = None, stop_after: int | None = None) -> dict:
    """Train from scratch twice with the same seed -- dense, and with SCFLP pruning + AIOWS counting -- one
    stage per epoch, checkpointed (weights, optimiser, masks, counters)."""
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
        rep.note(f"[bold]scflp[/] {model_name}: {data.note}; {cfg.epochs} epochs from scratch, "
                 f"prune every {cfg.interval} iterations to {100 * cfg.sparsity:.0f}%, CLP {cfg.clp}")
        for variant in ("dense", "scflp"):
            module = fresh_model(model_name, cfg.seed)
            opt = torch.optim.Adam(module.parameters(), lr=cfg.lr)
            pruner = Pruner(module, cfg, total) if variant == "scflp" else None
            counter = SkipCounter(module, cfg.lanes, cfg.balance, cfg.count_every,
                                  pruner.masks if pruner else {}, pruner.removed if pruner else {}) \
                if variant == "scflp" else None
            info = None
            for epoch in range(1, cfg.epochs + 1):
                name = f"{variant}/epoch{epoch}"
                step0 = (epoch - 1) * per_epoch

                def after_step(it, pruner=pruner, counter=counter):
                    if pruner is None:
                        return
                    if it % cfg.interval == 0:
                        pruner.prune(it)
                        counter.masks, counter.removed = pruner.masks, pruner.removed
                        counter.reassign()
                    else:
                        pruner.apply()
                    counter.step(it + 1)

                def run_epoch(name=name, step0=step0, module=module, opt=opt, pruner=pruner, counter=counter,
                              after_step=after_step):
                    if counter is not None:
                        counter.step(step0 + 1)
                    h = fit(module, data, FitConfig(steps=per_epoch, batch=cfg.batch, lr=cfg.lr), seed=cfg.seed,
                            stage=name, after_step=after_step, progress=rep, optimizer=opt, step0=step0)
                    val = accuracy(module, data.x_val, data.y_val, data.logprob)
                    test = accuracy(module, data.x_test, data.y_test, data.logprob)
                    payload = {"model": {k: v.detach().clone() for k, v in module.state_dict().items()},
                               "optimizer": opt.state_dict()}
                    info = {**h, "epoch": epoch, "val": val, "test": test}
                    if pruner is not None:
                        payload["pruner"] = pruner.state()
                        payload["counter"] = counter.state()
                        sp = pruner.sparsity()
                        info.update({"weight_sparsity": sp["total"], "layer_sparsity": sp["layers"],
                                     "channels_removed": sp["channels_removed"], "similarity": dict(pruner.sim)})
                    return payload, info

                def restore(t, module=module, opt=opt, pruner=pruner, counter=counter):
                    module.load_state_dict(t["model"])
                    opt.load_state_dict(t["optimizer"])
                    if pruner is not None:
                        pruner.load(t["pruner"])
                        counter.load(t["counter"])
                        counter.masks, counter.removed = pruner.masks, pruner.removed
                        counter.reassign()

                info = ck.stage(name, run_epoch, restore)
                if name in ck.ran:
                    killed_check()
                extra = (f"  weight sparsity {100 * info['weight_sparsity']:.1f}%"
                         if "weight_sparsity" in info else "")
                rep.note(f"{name}: loss {info['loss']:.4f}  val {info['val']:.2f}%  test {info['test']:.2f}%{extra}")
            out[variant] = {"info": info, "module": module, "pruner": pruner, "counter": counter}
            if counter is not None:
                counter.remove()
    result = summarise(model_name, cfg, out, data.note, ck)
    ck.write_json("result.json", result)
    return result


def summarise(model_name: str, cfg: SCFLPConfig, out: dict, note: str, ck: Checkpoints) -> dict:
    from .. import results

    dense, sc = out["dense"]["info"], out["scflp"]["info"]
    pruner, counter = out["scflp"]["pruner"], out["scflp"]["counter"]
    sim = pruner.sim
    saving = 1.0 - sim["computed"] / sim["exhaustive"] if sim["exhaustive"] else float("nan")
    saving_macs = 1.0 - sim["computed_macs"] / sim["exhaustive_macs"] if sim["exhaustive_macs"] else float("nan")
    sk = counter.summary()
    sp = pruner.sparsity()
    method = f"scflp:sparsity={cfg.sparsity},interval={cfg.interval},clp={cfg.clp},sample={cfg.sample}"
    rows = [results.row(model_name, "*", "accuracy", dense["test"], method="dense-training"),
            results.row(model_name, "*", "accuracy", sc["test"], method=method),
            results.row(model_name, "*", "zero_value_frac", sp["total"], method=method),
            results.row(model_name, "*", "clp_similarity_saving", saving, method=method),
            results.row(model_name, "*", "clp_similarity_computations", sim["computed"], method=method),
            results.row(model_name, "*", "clp_similarity_computations_exhaustive", sim["exhaustive"], method=method)]
    for name, s in sp["layers"].items():
        rows.append(results.row(model_name, name, "zero_value_frac", s, method=method))
    for p, d in sk["phases"].items():
        rows.append(results.row(model_name, "*", f"speedup_{p}", d["speedup_adaptive"], method=method, accel="pnpu"))
    rows.append(results.row(model_name, "*", "speedup", sk["overall"]["speedup_adaptive"], method=method,
                            accel="pnpu"))
    for name, lp in sk["layers"].items():
        for p, d in lp.items():
            if d["dense_macs"]:
                rows.append(results.row(model_name, name, f"speedup_{p}", d["speedup_adaptive"], method=method,
                                        accel="pnpu"))
    return {
        "method": "scflp", "source": SOURCE, "model": model_name, "data": note, "config": asdict(cfg),
        "dense": {"accuracy": dense["test"], "val_accuracy": dense["val"]},
        "scflp": {"accuracy": sc["test"], "val_accuracy": sc["val"], "weight_sparsity": sp["total"],
                  "layer_sparsity": sp["layers"], "channels_removed": sp["channels_removed"]},
        "accuracy_drop": dense["test"] - sc["test"],
        "pruning_work": {**sim, "saving": saving, "saving_macs": saving_macs},
        "zero_skipping": sk, "claims": CLAIMS,
        "stages_run": list(ck.ran), "stages_loaded": list(ck.loaded), "rows": rows,
    }


__all__ = ["SCFLPConfig", "Pruner", "SkipCounter", "skip_counts", "lane_time", "assign_lanes", "run",
           "target_sparsity"]
