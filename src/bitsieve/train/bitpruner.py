"""BitPruner ("Network Pruning for Bit-serial Accelerators", Zhao et al., DAC'20) -- a RECONSTRUCTION from the
abstract (methods.md section 5; confidence low), measured against baselines trained with the same budget.

What it does, per the abstract: learn a network whose weights have few, load-balanced essential bits for a
bit-serial accelerator (BSA), by progressive pruning and fine-tuning, without touching the hardware.

Reconstruction (methods.md 5.2):

1. Weights of every conv/linear layer are fixed point (int8 and int16 in one run), sign-magnitude, with a
   symmetric per-output-channel scale (methods.md decision 2).
2. A round with budget k keeps, for every weight, at most k of its essential (non-zero magnitude) bits, the
   most significant ones (``rounding``: the nearest value with at most k essential bits instead).
3. Load balance for the target design, whose lanes run a group of weights in lock-step: each group is capped so
   its lanes finish together -- weight-serial Pragmatic and Laconic time is set by the heaviest weight of the
   group ('weight' style), Bitlet's by the densest plane ('plane'), BitWave's by the non-zero planes ('column').
   Each group gets the tightest cap whose removed bits are worth at most ``balance_drop`` of the group's
   magnitude sum, removing bits of the heaviest weights first.
4. Fine-tuning with a straight-through estimator: the forward pass uses the projected weights (steps 1-3 redone
   on the latent float weights at every step), the gradient updates the latent weights as if the projection
   were the identity.
5. Schedule chosen by the accuracy budget: budgets go down one bit per round from the first budget that
   removes at least ``start_drop`` of the model's essential bits (higher budgets only touch the lowest bits of a
   few weights), and a round is kept while its validation accuracy stays within ``tolerance`` points of the
   non-pruned model fine-tuned for the same steps; the first round outside ends the schedule. Nothing forces
   the last budget: the data decide.

Baselines, per format, each trained for exactly the steps BitPruner spent (kept AND rejected rounds), in chunks
of one round each that see the same batches as BitPruner's rounds: the non-pruned fixed-point model, and a
magnitude-pruned model whose zero weights per layer match BitPruner's result. Ablations with no training: the
original model projected to BitPruner's final budget, without and with load balance. Cycles of every variant
on every design of ``designs`` come from the accelerator registry (``accel_bridge``).

Bit work (budgets, caps, rounding, statistics) is done on the packed planes of ``bitsieve.planes`` with word
operations (``bitsieve.train.bits``).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from .. import formats, planes, stats
from ..errors import UserError
from ..profile import counts, merge
from ..profile import stats as profile_stats
from . import SOURCES, accel_bridge, bits
from .loop import Checkpoints, FitConfig, Reporter, correct, fit, task_data, trainable_layers

SOURCE = SOURCES["bitpruner"][0]
CLAIMS = {"bit_sparsity_pct": 94.4, "speedup_vs_nonpruned": 2.1, "speedup_vs_weight_pruned": 1.5}
#: designs whose lock-step lane groups BitPruner can balance for, and what sets a group's time on each
#: (methods.md 7.2 BitSim variant, 7.3, 2.4, 8.1): the heaviest weight, the densest plane, the non-zero planes.
TARGET_STYLE = {"pragmatic-ws": "weight", "laconic": "weight", "bitlet": "plane", "bitwave": "column"}
TARGETS = tuple(TARGET_STYLE)
#: designs every variant is costed on: Stripes and DNNsim's Pragmatic are activation-serial (their cycles do not
#: depend on the weights, shown as 1.00x), Tactical skips zero weights, Laconic and the weight-serial Pragmatic
#: read weight terms/bits.
DESIGNS = ("stripes", "pragmatic", "laconic", "tactical", "pragmatic-ws")
#: per-task training defaults where a field is left at 0 (ImageNet: a few hundred images on 2 CPU cores)
TASK_DEFAULTS = {"mnist": {"batch": 64, "lr": 1e-4}, "faces": {"batch": 64, "lr": 1e-4},
                 "imagenet": {"batch": 16, "lr": 1e-5, "steps": 10}}
VARIANTS = ("original", "non-pruned FT", "magnitude FT", "rounding only", "rounding+balance", "bitpruner")


@dataclass
class BitPrunerConfig:
    """Every open choice of the reconstruction, with its default."""

    formats: tuple = ("int8", "int16")  # fixed-point formats, each a full run (sign-magnitude)
    start: int = 0  # first budget (0: the largest one that removes at least start_drop of the essential bits)
    start_drop: float = 0.01
    rounding: bool = False  # False: keep the k most significant bits; True: nearest k-term value (ties up)
    tolerance: float = 0.5  # keep a round while val >= non-pruned FT val - tolerance (percentage points)
    target: str = "pragmatic-ws"  # design whose lane groups are balanced: pragmatic-ws | laconic | bitlet | bitwave
    balance: str = "auto"  # auto (the target's style) | weight | plane | column | none
    balance_drop: float = 0.02  # most of a group's magnitude sum (L1) one cap may remove (truncation shrinks
    # weights: on deep nets (mobilenet-v2) 5 % per group compounds over the layers)
    group: int = 0  # lanes per balance group (0: the target's lane group; BitWave 32)
    designs: tuple = DESIGNS  # designs every variant is costed on
    act_samples: int = 1  # real inputs whose activations the activation-reading designs see
    epochs: float = 1.0  # fine-tuning per round (when steps is 0 and the task sets none)
    steps: int = 0  # fine-tuning steps per round (0: the task's default, else epochs)
    batch: int = 0  # 0: the task's default (64; ImageNet 16)
    lr: float = 0.0  # 0: the task's default (1e-4; ImageNet 1e-5)
    distill: float = -1.0  # weight of KL(original || pruned) added to the label loss; < 0: auto (1 for the
    # faces and ImageNet tasks, whose training sets are a few hundred images; 0 for MNIST)
    seed: int = 0

    #: fields where 0 means "the task's default" (the CLI's range checks skip that 0)
    AUTO_ZERO = ("steps", "batch", "lr", "start")

    def __post_init__(self):
        self.formats = tuple(str(f).strip().lower() for f in self.formats)
        self.designs = tuple(str(d).strip().lower() for d in self.designs)
        if not self.formats or any(f not in ("int8", "int16") for f in self.formats):
            raise UserError(f"bitpruner: formats must be int8 and/or int16, got {','.join(self.formats)}")
        if len(set(self.formats)) != len(self.formats):
            raise UserError("bitpruner: a format is listed twice")
        if self.target not in TARGETS:
            raise UserError(f"bitpruner: unknown target {self.target!r} ({', '.join(TARGETS)})")
        if self.balance not in ("auto", *bits.STYLES):
            raise UserError(f"bitpruner: balance must be auto, {', '.join(bits.STYLES)}; got {self.balance!r}")
        from ..accel import ACCELERATORS

        bad = [d for d in self.designs if d not in ACCELERATORS]
        if bad or not self.designs:
            raise UserError(f"bitpruner: unknown design(s) {', '.join(bad) or '(none)'} (see `bitsieve accelerators`)")
        top = min(formats.get(f).nbits for f in self.formats) - 1
        if not 0 <= self.start <= top:
            raise UserError(f"bitpruner: start must be 0 (auto) or a budget 1..{top} (below the {top + 1} "
                            f"magnitude bits of {'/'.join(self.formats)})")
        if not 0 < self.start_drop < 1:
            raise UserError("bitpruner: start_drop must be in (0, 1)")
        if not 0 <= self.balance_drop < 1:
            raise UserError("bitpruner: balance_drop must be in [0, 1)")
        if not 0 <= self.group <= 64:
            raise UserError("bitpruner: group must be 0..64")

    @property
    def style(self) -> str:
        return TARGET_STYLE[self.target] if self.balance == "auto" else self.balance

    def for_task(self, task: str) -> "BitPrunerConfig":
        """Zero fields replaced by the task's defaults; distill < 0 resolved."""
        d = {k: v for k, v in TASK_DEFAULTS[task].items() if not getattr(self, k)}
        if self.distill < 0:
            d["distill"] = 0.0 if task == "mnist" else 1.0
        return dataclasses.replace(self, **d)

    def fit_config(self) -> FitConfig:
        return FitConfig(epochs=self.epochs, steps=self.steps or None, batch=self.batch, lr=self.lr,
                         distill=self.distill)


# ---- projections (float weight -> fixed point -> lane planes -> pruned planes -> fixed point) ---------------
class Lanes:
    """One layer's weights cut into the target's lock-step lane groups (its layout, ``group`` lanes each)."""

    def __init__(self, shape: tuple, lay, taps: int):
        self.shape, self.lay, self.taps = tuple(shape), lay, int(taps)
        self.G = int(lay.G)

    def pack(self, q: np.ndarray, fmt: formats.Format) -> planes.Planes:
        vals = accel_bridge.gather(q.reshape(self.shape[0], -1), self.lay, self.taps)
        return planes.pack_raw(fmt.encode(vals), fmt, self.G, "none", axis=2)

    def unpack(self, p: planes.Planes) -> np.ndarray:
        """Planes -> signed integers in the weight's shape."""
        vals = np.rint(p.values()).astype(np.int64)
        return accel_bridge.scatter(vals, self.lay, self.taps, int(np.prod(self.shape[1:]))).reshape(self.shape)


@dataclass(frozen=True)
class Projection:
    """How one variant turns float weights into integers: format, budget k (None: no budget), load balance."""

    fmt: formats.Format
    level: int | None = None
    balance: bool = True
    rounding: bool = False
    style: str = "weight"
    drop: float = 0.05

    def planes(self, p: planes.Planes) -> planes.Planes:
        """Budget k per weight, then the target's lock-step cap (both only when k is set)."""
        if self.level is None:
            return p
        w = bits.keep_top_k(p.words, int(self.level), rounding=self.rounding)
        if self.balance:
            w = bits.balance(w, self.style, self.drop)
        return p.with_words(w)

    def __call__(self, w: np.ndarray, lanes: Lanes, mask: np.ndarray | None = None):
        """(integers, per-channel scale) of one weight; ``mask`` zeroes pruned weights first."""
        if mask is not None:
            w = w * mask
        q, scale = self.fmt.quantize(np.asarray(w, dtype=np.float64), axis=0)
        if self.level is not None:
            q = lanes.unpack(self.planes(lanes.pack(q, self.fmt)))
        return q, scale


class Projector:
    """Straight-through projection of every conv/linear weight of a module."""

    def __init__(self, module, proj: Projection, lanes: dict, masks: dict | None = None):
        self.module, self.proj, self.lanes, self.masks = module, proj, lanes, masks or {}
        self.layers = trainable_layers(module)

    def ints(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{layer: (integers, scale)} of the current latent weights."""
        return {name: self.proj(m.weight.detach().numpy(), self.lanes[name],
                                self.masks[name].numpy() if name in self.masks else None)
                for name, m in self.layers}

    @staticmethod
    def _real(q: np.ndarray, scale: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(q * scale.reshape((-1,) + (1,) * (q.ndim - 1))).to(torch.float32)

    def values(self) -> dict[str, torch.Tensor]:
        """{param name: projected weight} (no gradient)."""
        return {f"{n}.weight": self._real(*qs) for n, qs in self.ints().items()}

    def ste(self) -> dict[str, torch.Tensor]:
        """{param name: w + (q(w) - w).detach()} -- forward sees q(w), backward the identity."""
        out = {}
        for (name, m), (q, scale) in zip(self.layers, self.ints().values()):
            w = m.weight * self.masks[name] if name in self.masks else m.weight
            out[f"{name}.weight"] = w + (self._real(q, scale) - w).detach()
        return out


def start_budget(ints: dict[str, np.ndarray], nbits: int, drop: float) -> int:
    """The largest budget k < nbits whose cut removes at least ``drop`` of the model's essential bits (1 if none
    does): budgets above it only trim the lowest bits of a few weights, a round there would merely fine-tune."""
    e = np.concatenate([np.bitwise_count(np.abs(q).astype(np.uint64)).ravel() for q in ints.values()])
    hist = np.bincount(e.astype(np.int64), minlength=nbits + 1)
    total = max(int((hist * np.arange(hist.size)).sum()), 1)
    k = np.arange(1, nbits)
    removed = (np.maximum(np.arange(hist.size)[None, :] - k[:, None], 0) * hist[None, :]).sum(axis=1) / total
    ok = k[removed >= drop]
    return int(ok.max()) if ok.size else 1


def matched_masks(module, fmt: formats.Format, zeros: dict[str, int]) -> dict[str, torch.Tensor]:
    """Per layer, a magnitude mask (smallest |w| pruned, lower index first among ties) whose quantised layer
    holds as close as possible to ``zeros[layer]`` zero weights. Weights that round to 0 anyway count, so the
    mask size n is chosen on zeros(n) = n + (weights of rank >= n that round to 0), which never decreases."""
    masks = {}
    for name, m in trainable_layers(module):
        w = m.weight.detach().numpy().astype(np.float64)
        q, _ = fmt.quantize(w, axis=0)
        order = np.argsort(np.abs(w).ravel(), kind="stable")
        below = (q.ravel() == 0)[order].astype(np.int64)
        union = np.arange(order.size + 1) + np.concatenate([np.cumsum(below[::-1])[::-1], [0]])
        n = int(np.searchsorted(union, zeros[name], side="left"))  # first size reaching the target
        if n > order.size or (n > 0 and zeros[name] - union[n - 1] < union[n] - zeros[name]):
            n -= 1  # one size less is closer
        mask = np.ones(order.size, np.float32)
        mask[order[:n]] = 0.0
        masks[name] = torch.from_numpy(mask.reshape(w.shape))
    return masks


# ---- statistics and cycles ------------------------------------------------------------------------------
def bit_stats(ints: dict[str, np.ndarray], fmt: formats.Format) -> dict:
    """Bit sparsity etc. of integer weights, whole model and per layer (bitsieve.profile figures, groups of 64
    along the dot-product axis; padding never counted)."""
    pl = {n: planes.pack_raw(fmt.encode(q), fmt, 64) for n, q in ints.items()}
    per = {n: profile_stats(counts(p)) for n, p in pl.items()}
    tot = profile_stats(merge([counts(p) for p in pl.values()]))

    def pick(s):
        return {"bit_sparsity": s["zero_bit_frac"], "weight_sparsity": s["zero_value_frac"],
                "mean_essential_bits": s["mean_essential_bits"], "max_essential_bits": s["max_essential_bits"],
                "values": s["values"]}

    return {"total": pick(tot), "layers": {n: pick(s) for n, s in per.items()}}


def acc_figures(hits: np.ndarray, base: np.ndarray | None, seed: int) -> dict:
    """Accuracy with its n and 95 % Wilson interval; with ``base`` (the fine-tuned non-pruned model's per-sample
    hits on the same samples) the paired change, its paired-bootstrap 95 % interval and McNemar's p."""
    n, k = int(hits.size), int(hits.sum())
    lo, hi = stats.wilson(k, n)
    out = {"accuracy": 100.0 * k / n, "n": n, "correct": k, "ci": [100.0 * lo, 100.0 * hi]}
    if base is not None:
        d_lo, d_hi = stats.paired_bootstrap(base, hits, seed=seed)
        b, c = int((base & ~hits).sum()), int((~base & hits).sum())
        out.update(change=100.0 * (k - int(base.sum())) / n, change_ci=[100.0 * d_lo, 100.0 * d_hi],
                   mcnemar_p=stats.mcnemar_p(b, c))
    return out


# ---- the job ------------------------------------------------------------------------------------------------
def _state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def run(model_name: str, cfg: BitPrunerConfig, out_dir=None, resume: bool = False, force: bool = False,
        progress: bool = True, train_limit: int | None = None, test_limit: int | None = None,
        val_size: int | None = None, stop_after: int | None = None) -> dict:
    """BitPruner on a built-in model with its fairly trained baselines and no-training ablations, per format.

    Returns a dict with, per format, the six variants (accuracy with n and intervals, bit statistics, cycles and
    speed-ups per design), BitPruner's rounds, the abstract's claims and tidy result rows. ``stop_after`` (tests)
    raises KeyboardInterrupt after that many stages have been *computed* in this call, as if killed there.
    """
    from ..zoo import BUILTINS

    torch.manual_seed(cfg.seed)
    data = task_data(model_name, cfg.seed, train_limit=train_limit, val_size=val_size, test_limit=test_limit)
    cfg = cfg.for_task(data.task)
    module = BUILTINS[model_name].load()
    teacher = copy.deepcopy(module).eval() if cfg.distill > 0 else None
    config = {"method": "bitpruner", "model": model_name, **asdict(cfg), "train_limit": train_limit,
              "test_limit": test_limit, "val_size": val_size}
    ck = Checkpoints(out_dir, config, resume=resume, force=force)
    computed = [0]

    def killed_check(name):
        if name in ck.ran:
            computed[0] += 1
            if stop_after is not None and computed[0] >= stop_after:
                raise KeyboardInterrupt(f"simulated kill after {computed[0]} stages")

    with Reporter(progress) as rep:
        job = _Job(model_name, cfg, data, module, teacher, ck, killed_check, rep)
        per_format = {f: job.run_format(f) for f in cfg.formats}
    result = {"method": "bitpruner", "source": SOURCE, "model": model_name, "data": data.note,
              "target": cfg.target, "style": cfg.style, "config": asdict(cfg), "claims": CLAIMS,
              "formats": per_format, "stages_run": list(ck.ran), "stages_loaded": list(ck.loaded),
              "rows": [r for f in per_format.values() for r in f.pop("rows")]}
    ck.write_json("result.json", result)
    return result


class _Job:
    """One BitPruner run: shared data, module, checkpoints; ``run_format`` does everything for one format."""

    def __init__(self, model_name, cfg, data, module, teacher, ck, killed_check, rep):
        self.model_name, self.cfg, self.data, self.module, self.teacher = model_name, cfg, data, module, teacher
        self.ck, self.killed_check, self.rep = ck, killed_check, rep
        self.original = _state(module)

    def hits(self, proj: Projector, split: str) -> np.ndarray:
        d = self.data
        x, y = (d.x_val, d.y_val) if split == "val" else (d.x_test, d.y_test)
        return correct(self.module, x, y, d.logprob, proj.values(), batch=d.eval_batch)

    def chunk(self, name: str, start: dict, make: Callable[[], Projector], order_key: str) -> dict:
        """Train one chunk (a round or a baseline's share of the budget) from ``start``; afterwards the module
        holds its latent weights. Returns its summary (steps, loss, val accuracy)."""
        def run_():
            self.module.load_state_dict(start)
            proj = make()
            h = fit(self.module, self.data, self.cfg.fit_config(), seed=self.cfg.seed, stage=name,
                    params_fn=proj.ste, teacher=self.teacher, progress=self.rep, order_key=order_key)
            val = 100.0 * float(self.hits(proj, "val").mean())
            return _state(self.module), {**h, "val": val}

        info = self.ck.stage(name, run_, lambda t: self.module.load_state_dict(t))
        self.killed_check(name)
        return info

    def run_format(self, fmt_name: str) -> dict:
        cfg, module, rep = self.cfg, self.module, self.rep
        fmt = formats.get(fmt_name)
        tg = accel_bridge.target(self.model_name, cfg.target, fmt_name, cfg.act_samples)
        group = cfg.group or accel_bridge.BALANCE_GROUP.get(cfg.target) or None
        lanes = {}
        for name, m in trainable_layers(module):
            if name not in tg.workloads:
                raise UserError(f"layer {name} of {self.model_name} is not among the target's workloads")
            lanes[name] = Lanes(tuple(m.weight.shape), tg.layout(name, group), tg.workloads[name].taps)
        G = sorted({ln.G for ln in lanes.values()})
        P = dict(fmt=fmt, rounding=cfg.rounding, style=cfg.style, drop=cfg.balance_drop)
        plain = Projection(**P)

        def budget(k, balance=True):
            return Projection(**P, level=int(k), balance=balance)

        module.load_state_dict(self.original)
        ints0 = {n: q for n, (q, _) in Projector(module, plain, lanes).ints().items()}
        k0 = cfg.start or start_budget(ints0, fmt.nbits, cfg.start_drop)
        rep.note(f"[bold]bitpruner[/] {self.model_name} {fmt_name}: {self.data.note}; target {cfg.target} "
                 f"({cfg.style} cap over lane groups of {'/'.join(map(str, G))}); budgets from {k0} down")

        # BitPruner's rounds, each next to the non-pruned model trained by as many steps (same batches)
        bp_state, bp_level, base_state, rounds = self.original, None, self.original, []
        for r, k in enumerate(range(k0, 0, -1), 1):
            key = f"{fmt_name}/chunk{r}"
            b = self.chunk(f"{fmt_name}/nonpruned/c{r}", base_state, lambda: Projector(module, plain, lanes), key)
            base_state = _state(module)
            info = self.chunk(f"{fmt_name}/bitpruner/k{k}", bp_state,
                              lambda k=k: Projector(module, budget(k), lanes), key)
            kept = info["val"] >= b["val"] - cfg.tolerance
            rounds.append({"budget": k, "steps": info["steps"], "val": info["val"], "reference_val": b["val"],
                           "kept": bool(kept)})
            rep.note(f"{fmt_name} k={k}: val {info['val']:.2f}% vs non-pruned FT {b['val']:.2f}% "
                     f"({'kept' if kept else 'outside the tolerance: stop'})")
            if not kept:
                break
            bp_state, bp_level = _state(module), k
        n_chunks = len(rounds)
        steps_total = sum(x["steps"] for x in rounds)

        # BitPruner's result, and the magnitude baseline at its zero weights per layer
        module.load_state_dict(bp_state)
        bp_proj = budget(bp_level) if bp_level is not None else plain
        bp_ints = {n: q for n, (q, _) in Projector(module, bp_proj, lanes).ints().items()}
        zeros = {n: int((q == 0).sum()) for n, q in bp_ints.items()}
        module.load_state_dict(self.original)
        masks = matched_masks(module, fmt, zeros)
        at_mask = Projector(module, plain, lanes, masks).ints()
        match = {"target_zeros": zeros, "mask_zeros": {n: int((q == 0).sum()) for n, (q, _) in at_mask.items()}}
        mg_state = self.original
        for r in range(1, n_chunks + 1):
            self.chunk(f"{fmt_name}/magnitude/c{r}", mg_state, lambda: Projector(module, plain, lanes, masks),
                       f"{fmt_name}/chunk{r}")
            mg_state = _state(module)

        specs = {  # variant -> (latent state, projection, masks, steps trained)
            "original": (self.original, plain, None, 0),
            "non-pruned FT": (base_state, plain, None, steps_total),
            "magnitude FT": (mg_state, plain, masks, steps_total),
            "rounding only": (self.original, budget(bp_level, balance=False), None, 0) if bp_level else None,
            "rounding+balance": (self.original, budget(bp_level), None, 0) if bp_level else None,
            "bitpruner": (bp_state, bp_proj, None, steps_total),
        }
        tgs = {d: accel_bridge.target(self.model_name, d, fmt_name, cfg.act_samples) for d in cfg.designs}
        variants, ref = {}, None
        for vname in VARIANTS:
            spec = specs[vname]
            if spec is None:
                continue
            state, proj, mk, steps = spec
            module.load_state_dict(state)
            pj = Projector(module, proj, lanes, mk)
            ints = {n: q for n, (q, _) in pj.ints().items()}
            hits = self.hits(pj, "test")
            if vname == "non-pruned FT":
                ref = hits
            cyc = {d: {n: t.cycles(n, q) for n, q in ints.items()} for d, t in tgs.items()}
            variants[vname] = {"name": vname, "budget": proj.level, "balanced": bool(proj.level and proj.balance),
                               "steps": steps, "hits": hits,
                               "stats": bit_stats(ints, fmt),
                               "cycles": {d: float(sum(c.values())) for d, c in cyc.items()},
                               "layer_cycles": cyc}
        for v in variants.values():
            v.update(acc_figures(v.pop("hits"), None if v["name"] == "non-pruned FT" else ref, cfg.seed))
        out = summarise(self.model_name, fmt_name, cfg, variants, rounds, k0, G, tgs)
        out["magnitude_match"] = match  # BitPruner's zero weights per layer, and the mask's before training
        return out


def summarise(model_name: str, fmt: str, cfg: BitPrunerConfig, variants: dict, rounds: list, k0: int,
              groups: list[int], tgs: dict) -> dict:
    """Variants -> speed-ups per design vs the fine-tuned non-pruned and magnitude models, claims, tidy rows."""
    from .. import results

    base, mag = variants["non-pruned FT"]["cycles"], variants["magnitude FT"]["cycles"]
    for v in variants.values():
        v["speedup_vs_nonpruned"] = {d: base[d] / c if c else None for d, c in v["cycles"].items()}
        v["speedup_vs_magnitude"] = {d: mag[d] / c if c else None for d, c in v["cycles"].items()}
    bp = variants["bitpruner"]
    rows = []
    for v in variants.values():
        common = dict(method=_spec(cfg, v), format=fmt, group=max(groups))
        rows.append(results.row(model_name, "*", "accuracy", v["accuracy"], **common))
        for key, metric in (("bit_sparsity", "zero_bit_frac"), ("weight_sparsity", "zero_value_frac"),
                            ("mean_essential_bits", "mean_essential_bits")):
            rows.append(results.row(model_name, "*", metric, v["stats"]["total"][key], **common))
            for layer, s in v["stats"]["layers"].items():
                rows.append(results.row(model_name, layer, metric, s[key], **common))
        for d, c in v["cycles"].items():
            rows.append(results.row(model_name, "*", "cycles", c, accel=d, **common))
            for layer, lc in v["layer_cycles"][d].items():
                rows.append(results.row(model_name, layer, "cycles", lc, accel=d, **common))
            rows.append(results.row(model_name, "*", "speedup_vs_nonpruned", v["speedup_vs_nonpruned"][d],
                                    accel=d, **common))
    bsp = 100.0 * bp["stats"]["total"]["bit_sparsity"]
    verdict = {"bit_sparsity_pct": bsp, "bit_sparsity_reproduced": bsp >= CLAIMS["bit_sparsity_pct"],
               "speedup_vs_nonpruned": bp["speedup_vs_nonpruned"],
               "speedup_vs_magnitude": bp["speedup_vs_magnitude"],
               "within_tolerance": bp.get("change", 0.0) >= -cfg.tolerance}
    return {"format": fmt, "start_budget": k0, "budget": bp["budget"], "groups": groups,
            "rounds": rounds, "steps_per_variant": bp["steps"],
            "designs": {d: {"reads_weights": t.reads_weights, "title": t.acc.title} for d, t in tgs.items()},
            "variants": [{k: v for k, v in x.items() if k != "layer_cycles"} for x in variants.values()],
            "paper": verdict, "rows": rows}


def _spec(cfg: BitPrunerConfig, v: dict) -> str:
    """The method label of a variant in the tidy rows."""
    if v["name"] in ("original", "non-pruned FT"):
        return "" if v["name"] == "original" else "finetune"
    if v["name"] == "magnitude FT":
        return f"magnitude:sparsity={v['stats']['total']['weight_sparsity']:.4f}"
    if v["budget"] is None:
        return "bitpruner:none"
    tail = f",target={cfg.target},style={cfg.style},drop={cfg.balance_drop}" if v["balanced"] else ",balance=none"
    kind = "bitpruner" if v["name"] == "bitpruner" else "bitpruner-projection"
    return f"{kind}:k={v['budget']}{tail}{',round' if cfg.rounding else ''}"
