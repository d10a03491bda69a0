"""BitPruner ("Network Pruning for Bit-serial Accelerators", Zhao et al., DAC'20) -- a RECONSTRUCTION from the
abstract (methods.md section 5; confidence low). Every choice the abstract leaves open is a parameter of
``BitPrunerConfig`` with the default documented there.

What it does, per the abstract: learn a network whose weights have few, load-balanced essential bits for a
bit-serial accelerator (BSA), by progressive pruning and fine-tuning, without touching the hardware.

Reconstruction (methods.md 5.2):

1. Weights of every conv/linear layer are fixed point, ``bits`` wide (8 or 16), sign-magnitude, with a symmetric
   per-output-channel scale (methods.md decision 2).
2. A round with budget k keeps, for every weight, at most k of its essential (non-zero magnitude) bits, the
   most significant ones (``rounding``: the nearest value with at most k essential bits instead).
3. Load balance for a target BSA whose lanes run a group of G weights in lock-step: each group is capped so
   its lanes finish together -- Pragmatic/Laconic time is set by the heaviest weight of the group ('weight'
   style), Bitlet's by the densest plane ('plane'), BitWave's by the number of non-zero planes ('column'; a
   bitsieve extension of the abstract's idea). Each group gets the tightest cap whose removed bits are worth at
   most ``balance_drop`` of the group's magnitude sum, removing bits of the heaviest weights first.
4. Fine-tuning with a straight-through estimator: the forward pass uses the projected weights (steps 1-3 redone
   on the latent float weights at every step), the gradient updates the latent weights as if the projection
   were the identity.
5. Progressive schedule: budgets ``schedule`` (default 6, 5, 4, 3, 2); a round is kept only while the
   validation metric stays within ``tolerance`` (absolute percentage points) of the non-pruned fixed-point
   model; the first round that falls outside ends the schedule and the last kept round is the result.
6. Baselines from the same run: the non-pruned fixed-point model and a magnitude (value) pruned model with
   its own progressive schedule (``magnitude_schedule``, fraction of zero weights per layer), fine-tuned the
   same way under the same tolerance.

Bit work (budgets, caps, rounding, statistics) is done on the packed planes of ``bitsieve.planes`` with word
operations (``bitsieve.train.bits``); cycles come from the accelerator models of ``bitsieve.accel``.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .. import formats, planes
from ..errors import UserError
from ..profile import counts, merge, stats
from . import accel_bridge, bits
from .loop import Checkpoints, FitConfig, Reporter, accuracy, fit, task_data, trainable_layers

SOURCE = "BitPruner (Zhao et al., DAC'20), reconstructed from the abstract: methods.md section 5 [I, low]"
CLAIMS = {"bit_sparsity_pct": 94.4, "speedup_vs_nonpruned": 2.1, "speedup_vs_weight_pruned": 1.5}
TARGETS = ("pragmatic", "laconic", "bitlet", "bitwave")
#: what sets the time of a lock-step lane group on each target BSA (methods.md 7.2, 7.3, 2.4, 8.1): the
#: heaviest weight (Pragmatic, Laconic), the densest plane (Bitlet), the non-zero planes (BitWave). The group
#: is the target model's own lane group and layout (16 for DNNsim Pragmatic/Laconic, 64 for a Bitlet PE), except
#: BitWave, balanced over the 32-lane groups of its BitSim dataflows (accel_bridge.BALANCE_GROUP).
TARGET_STYLE = {"pragmatic": "weight", "laconic": "weight", "bitlet": "plane", "bitwave": "column"}


@dataclass
class BitPrunerConfig:
    """Every open choice of the reconstruction, with its default."""

    bits: int = 8  # fixed-point width, sign-magnitude (8 or 16)
    schedule: tuple = (6, 5, 4, 3, 2)  # essential-bit budget per weight, one round each
    rounding: bool = False  # False: keep the k most significant bits; True: nearest k-term value (ties up)
    tolerance: float = 1.0  # keep a round while val metric >= non-pruned - tolerance (percentage points)
    target: str = "pragmatic"  # pragmatic | laconic | bitlet | bitwave
    balance: str = "auto"  # auto (the target's style) | weight | plane | column | none
    balance_drop: float = 0.05  # most of a group's magnitude sum (L1) one cap may remove
    group: int = 0  # lanes per balance group (0: the target's lane group; BitWave 32)
    act_samples: int = 1  # real inputs whose activations activation-reading targets (laconic) see
    magnitude_schedule: tuple = (0.5, 0.7, 0.8, 0.9, 0.95)  # zero-weight fraction per layer, one round each
    epochs: float = 1.0  # fine-tuning per round
    steps: int = 0  # fine-tuning steps per round (0: use epochs)
    batch: int = 64
    lr: float = 1e-4
    distill: float = -1.0  # weight of KL(original || pruned) added to the label loss; < 0: auto (1 for the
    # faces task, whose 100 training crops are few; 0 for MNIST)
    seed: int = 0

    def __post_init__(self):
        self.schedule = tuple(int(k) for k in self.schedule)
        self.magnitude_schedule = tuple(float(s) for s in self.magnitude_schedule)
        if self.bits not in (8, 16):
            raise UserError(f"bitpruner: bits must be 8 or 16, got {self.bits}")
        if self.target not in TARGETS:
            raise UserError(f"bitpruner: unknown target {self.target!r} ({', '.join(TARGETS)})")
        if self.balance not in ("auto", *bits.STYLES):
            raise UserError(f"bitpruner: balance must be auto, {', '.join(bits.STYLES)}; got {self.balance!r}")
        if not self.schedule or any(k < 0 or k > self.bits - 1 for k in self.schedule):
            raise UserError(f"bitpruner: budgets must be 0..{self.bits - 1}, got {self.schedule}")
        if any(not 0 <= s < 1 for s in self.magnitude_schedule):
            raise UserError("bitpruner: magnitude sparsities must be in [0, 1)")
        if not 0 <= self.balance_drop < 1:
            raise UserError("bitpruner: balance_drop must be in [0, 1)")
        if not 0 <= self.group <= 64:
            raise UserError("bitpruner: group must be 0..64")

    @property
    def fmt(self) -> formats.Format:
        return formats.get(f"int{self.bits}")

    @property
    def style(self) -> str:
        return TARGET_STYLE[self.target] if self.balance == "auto" else self.balance

    def fit_config(self) -> FitConfig:
        return FitConfig(epochs=self.epochs, steps=self.steps or None, batch=self.batch, lr=self.lr,
                         distill=self.distill)


# ---- projections (float weight -> fixed point -> lane planes -> pruned planes -> fixed point) ---------------
def quantize(w: np.ndarray, fmt: formats.Format) -> tuple[np.ndarray, np.ndarray]:
    """Sign-magnitude integers with a symmetric per-output-channel scale (methods.md decision 2)."""
    return fmt.quantize(np.asarray(w, dtype=np.float64), axis=0)


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


def prune_planes(p: planes.Planes, k: int | None, cfg: "BitPrunerConfig") -> planes.Planes:
    """Budget k per weight (None: no budget), then the target's lock-step cap (when k is set)."""
    if k is None:
        return p
    w = bits.keep_top_k(p.words, k, rounding=cfg.rounding)
    w = bits.balance(w, cfg.style, cfg.balance_drop)
    return p.with_words(w)


def project(w: np.ndarray, level, cfg: "BitPrunerConfig", lanes: Lanes,
            mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(integers, per-channel scale) a round uses for one weight: ``level`` = budget k (BitPruner) or None
    (non-pruned); ``mask`` zeroes pruned weights first (magnitude baseline)."""
    if mask is not None:
        w = w * mask
    q, scale = quantize(w, cfg.fmt)
    if level is not None:
        q = lanes.unpack(prune_planes(lanes.pack(q, cfg.fmt), int(level), cfg))
    return q, scale


def magnitude_masks(module, sparsity: float) -> dict[str, torch.Tensor]:
    """Per layer, keep the largest (1 - sparsity) weights by magnitude (ties: lower index kept)."""
    masks = {}
    for name, m in trainable_layers(module):
        w = m.weight.detach().abs().flatten()
        n_zero = int(round(sparsity * w.numel()))
        mask = torch.ones_like(w)
        if n_zero:
            order = torch.sort(w, stable=True).indices
            mask[order[:n_zero]] = 0
        masks[name] = mask.reshape(m.weight.shape)
    return masks


class Projector:
    """Straight-through projection of every conv/linear weight of a module for one round."""

    def __init__(self, module, cfg: "BitPrunerConfig", lanes: dict, level=None, masks: dict | None = None):
        self.module, self.cfg, self.lanes, self.level, self.masks = module, cfg, lanes, level, masks or {}
        self.layers = trainable_layers(module)

    def ints(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{layer: (integers, scale)} of the current latent weights."""
        return {name: project(m.weight.detach().numpy(), self.level, self.cfg, self.lanes[name],
                              None if name not in self.masks else self.masks[name].numpy())
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


# ---- statistics and cycles ------------------------------------------------------------------------------
def bit_stats(ints: dict[str, np.ndarray], fmt: formats.Format) -> dict:
    """Bit sparsity etc. of integer weights, whole model and per layer (bitsieve.profile figures, groups of 64
    along the dot-product axis; padding never counted)."""
    pl = {n: planes.pack_raw(fmt.encode(q), fmt, 64) for n, q in ints.items()}
    per = {n: stats(counts(p)) for n, p in pl.items()}
    tot = stats(merge([counts(p) for p in pl.values()]))

    def pick(s):
        return {"bit_sparsity": s["zero_bit_frac"], "weight_sparsity": s["zero_value_frac"],
                "mean_essential_bits": s["mean_essential_bits"], "max_essential_bits": s["max_essential_bits"],
                "values": s["values"]}

    return {"total": pick(tot), "layers": {n: pick(s) for n, s in per.items()}}


def cycles_available(target: str = "pragmatic") -> bool:
    """Whether ``bitsieve.accel`` can cost weight bits on ``target``."""
    return accel_bridge.available(target)


def cycles(tg: "accel_bridge.Target", ints: dict[str, np.ndarray]) -> dict:
    """Cycles of each layer on the target accelerator model, from its integer weights."""
    per = {n: tg.cycles(n, q) for n, q in ints.items()}
    return {"layers": per, "total": float(sum(per.values()))}


# ---- the job ------------------------------------------------------------------------------------------------
@dataclass
class Variant:
    """One of the three compared models: its name, method spec, accuracy, bit statistics, cycles, history."""

    name: str
    method: str
    level: object
    val: float
    test: float
    stats: dict
    cycles: dict | None
    rounds: list = field(default_factory=list)


def _state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def run(model_name: str, cfg: BitPrunerConfig, out_dir=None, resume: bool = False, force: bool = False,
        progress: bool = True, train_limit: int | None = None, test_limit: int | None = None,
        val_size: int | None = None, stop_after: int | None = None) -> dict:
    """BitPruner on a built-in model, with the non-pruned and magnitude-pruned baselines.

    Returns a dict with the three variants, per-round histories, the abstract's claims and tidy result rows.
    ``stop_after`` (tests) raises KeyboardInterrupt after that many stages have been *computed* in this call,
    as if the process had been killed there.
    """
    from ..zoo import BUILTINS

    torch.manual_seed(cfg.seed)
    data = task_data(model_name, cfg.seed, train_limit=train_limit, val_size=val_size, test_limit=test_limit)
    if cfg.distill < 0:
        cfg = dataclasses.replace(cfg, distill=1.0 if data.task == "faces" else 0.0)
    module = BUILTINS[model_name].load()
    teacher = copy.deepcopy(module).eval() if cfg.distill > 0 else None
    original = _state(module)
    config = {"method": "bitpruner", "model": model_name, **asdict(cfg), "train_limit": train_limit,
              "test_limit": test_limit, "val_size": val_size}
    ck = Checkpoints(out_dir, config, resume=resume, force=force)
    tg = accel_bridge.target(model_name, cfg.target, cfg.fmt.name, cfg.act_samples)
    group = cfg.group or accel_bridge.BALANCE_GROUP.get(cfg.target) or None
    lanes = {}
    for name, m in trainable_layers(module):
        if name not in tg.workloads:
            raise UserError(f"layer {name} of {model_name} is not among the target's workloads")
        lanes[name] = Lanes(tuple(m.weight.shape), tg.layout(name, group), tg.workloads[name].taps)
    G = sorted({ln.G for ln in lanes.values()})
    computed = [0]

    def killed_check():
        computed[0] += 1
        if stop_after is not None and computed[0] >= stop_after:
            raise KeyboardInterrupt(f"simulated kill after {computed[0]} stages")

    with Reporter(progress) as rep:
        rep.note(f"[bold]bitpruner[/] {model_name}: {data.note}; int{cfg.bits} sign-magnitude, target "
                 f"{cfg.target} ({cfg.style} cap over lane groups of {'/'.join(map(str, G))})")

        def evaluate(proj: Projector):
            vals = proj.values()
            return (accuracy(module, data.x_val, data.y_val, data.logprob, vals),
                    accuracy(module, data.x_test, data.y_test, data.logprob, vals))

        # -- non-pruned fixed-point reference (no training)
        def base_run():
            val, test = evaluate(Projector(module, cfg, lanes, None))
            return original, {"val": val, "test": test}

        base = ck.stage("nonpruned", base_run, lambda t: module.load_state_dict(t))
        if "nonpruned" in ck.ran:
            killed_check()
        rep.note(f"non-pruned int{cfg.bits}: val {base['val']:.2f}%  test {base['test']:.2f}%")
        floor = base["val"] - cfg.tolerance

        def chain(prefix: str, levels, make_projector):
            """Rounds of one progressive schedule -> (last kept level, its latent state, its masks, round infos).
            A round's checkpoint holds the latent weights ('state/...') and its masks ('mask/...')."""
            module.load_state_dict(original)
            kept = (None, original, None)
            infos = []
            for level in levels:
                name = f"{prefix}{level}"
                masks_box = [None]

                def run_round(level=level, name=name):
                    proj = make_projector(level)
                    masks_box[0] = proj.masks
                    h = fit(module, data, cfg.fit_config(), seed=cfg.seed, stage=name,
                            params_fn=proj.ste, teacher=teacher, progress=rep)
                    val, test = evaluate(proj)
                    st = bit_stats({n: q for n, (q, _) in proj.ints().items()}, cfg.fmt)["total"]
                    tensors = {**{f"state/{k}": v for k, v in _state(module).items()},
                               **{f"mask/{k}": v for k, v in proj.masks.items()}}
                    return tensors, {**h, "level": level, "val": val, "test": test, "kept": bool(val >= floor),
                                     **st}

                def restore(t):
                    module.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("state/")})
                    masks_box[0] = {k[5:]: v for k, v in t.items() if k.startswith("mask/")}

                info = ck.stage(name, run_round, restore)
                if name in ck.ran:
                    killed_check()
                infos.append(info)
                rep.note(f"{name}: val {info['val']:.2f}%  test {info['test']:.2f}%  bit sparsity "
                         f"{100 * info['bit_sparsity']:.1f}%  weight sparsity {100 * info['weight_sparsity']:.1f}%"
                         f"  {'kept' if info['kept'] else 'rejected: stop'}")
                if not info["kept"]:
                    break
                kept = (level, _state(module), masks_box[0] or None)
            return (*kept, infos)

        bp_level, bp_state, _, bp_rounds = chain("bitpruner/k", cfg.schedule, lambda k: Projector(module, cfg, lanes, int(k)))
        mg_level, mg_state, mg_masks, mg_rounds = chain(
            "magnitude/s", cfg.magnitude_schedule,
            lambda s: Projector(module, cfg, lanes, None, magnitude_masks(module, float(s))))

    # -- the three variants, evaluated on the final (projected) weights
    variants = []
    for name, method, level, state, masks, hist in (
            ("non-pruned", "", None, original, None, []),
            ("magnitude-pruned", f"magnitude:sparsity={mg_level}" if mg_level is not None else "", None, mg_state,
             mg_masks, mg_rounds),
            ("bitpruner", _spec(cfg, bp_level), bp_level, bp_state, None, bp_rounds)):
        module.load_state_dict(state)
        ints = {n: q for n, (q, _) in Projector(module, cfg, lanes, level, masks).ints().items()}
        kept_rounds = [r for r in hist if r["kept"]]
        src = kept_rounds[-1] if kept_rounds else base
        variants.append(Variant(name, method, level, src["val"], src["test"], bit_stats(ints, cfg.fmt),
                                cycles(tg, ints), hist))
    result = summarise(model_name, cfg, variants, data.note, ck, G)
    ck.write_json("result.json", result)
    return result


def _spec(cfg: BitPrunerConfig, level) -> str:
    if level is None:
        return ""
    return (f"bitpruner:k={level},target={cfg.target},style={cfg.style},drop={cfg.balance_drop}"
            f"{',round' if cfg.rounding else ''}")


def summarise(model_name: str, cfg: BitPrunerConfig, variants: list[Variant], note: str, ck: Checkpoints,
              groups: list[int]) -> dict:
    """Variants -> summary figures, speed-ups, claims and tidy rows."""
    from .. import results

    by = {v.name: v for v in variants}
    tot = {n: (v.cycles or {}).get("total") for n, v in by.items()}
    sp = {}
    if all(t for t in tot.values()):
        sp = {"vs_nonpruned": tot["non-pruned"] / tot["bitpruner"],
              "vs_magnitude": tot["magnitude-pruned"] / tot["bitpruner"],
              "magnitude_vs_nonpruned": tot["non-pruned"] / tot["magnitude-pruned"]}
    fmt, G = cfg.fmt.name, max(groups)
    rows = []
    for v in variants:
        method = v.method if v.name != "non-pruned" else ""
        common = dict(method=method, format=fmt, group=G)
        rows.append(results.row(model_name, "*", "accuracy", v.test, **common))
        rows.append(results.row(model_name, "*", "val_accuracy", v.val, **common))
        for key in ("bit_sparsity", "weight_sparsity", "mean_essential_bits"):
            metric = {"bit_sparsity": "zero_bit_frac", "weight_sparsity": "zero_value_frac"}.get(key, key)
            rows.append(results.row(model_name, "*", metric, v.stats["total"][key], **common))
            for layer, s in v.stats["layers"].items():
                rows.append(results.row(model_name, layer, metric, s[key], **common))
        if v.cycles:
            for layer, c in v.cycles["layers"].items():
                rows.append(results.row(model_name, layer, "cycles", c, accel=cfg.target, **common))
            rows.append(results.row(model_name, "*", "cycles", v.cycles["total"], accel=cfg.target, **common))
            if tot["non-pruned"]:
                rows.append(results.row(model_name, "*", "speedup_vs_nonpruned", tot["non-pruned"] / v.cycles["total"],
                                        accel=cfg.target, **common))
    return {
        "method": "bitpruner", "source": SOURCE, "model": model_name, "data": note, "target": cfg.target,
        "style": cfg.style, "group": G, "groups": groups, "format": fmt, "config": asdict(cfg),
        "variants": [{"name": v.name, "method": v.method, "level": v.level, "val_accuracy": v.val,
                      "accuracy": v.test, **v.stats["total"],
                      "cycles": None if not v.cycles else v.cycles["total"], "rounds": v.rounds}
                     for v in variants],
        "speedup": sp, "claims": CLAIMS,
        "stages_run": list(ck.ran), "stages_loaded": list(ck.loaded),
        "accel_available": bool(all(t for t in tot.values())),
        "rows": rows,
    }
