"""PNPU hardware figures of an SCFLP run: on-chip weight-memory accesses of the pruning unit, and the energy
efficiency of ``accel/pnpu.py`` on the trained networks.

Weight memory [I] (the abstract: "weight memory shared pruning unit removed on-chip weight memory access for
WP"). Accesses are counted in weight words, from the real masks, for the non-zero (stored) weights only:

- training, every iteration and layer: FP reads each weight, BP reads it again (not in the first layer, which
  computes no dX), WG's update reads and writes it;
- weight pruning with a *separate* pruning unit, every pruning step and layer: FLP reads every stored weight
  to find the magnitude threshold, CLP reads the stored weights of every filter whose similarity it computes
  (stochastic: the sampled filters; exhaustive: all alive), and every weight whose mask entry turns to zero is
  written back as zero;
- a pruning unit *sharing* the weight memory sees the weights as the WG update streams them and applies the
  masks in the same write, so it adds no access: it saves all of the separate unit's accesses.

What the model earns is the size of that saving next to the training traffic, which the real masks set.
"""
from __future__ import annotations

import torch

WG_ACCESSES = 2  # WG's weight update: one read, one write


class WeightMemory:
    """Counts weight-memory words of training and of a separate pruning unit, from the pruner's masks."""

    def __init__(self, layers, masks: dict):
        self.names = [n for n, _ in layers]
        self.first = self.names[0] if self.names else None
        self.words = {"train": 0, "prune_flp_read": 0, "prune_clp_read": 0, "prune_write": 0}
        self.per_iter = 0
        self.refresh(masks)

    def refresh(self, masks: dict):
        """Words touched by one training iteration under ``masks`` (after a pruning step)."""
        self.per_iter = sum(int((masks[n] != 0).sum()) * (WG_ACCESSES + (1 if n == self.first else 2))
                            for n in self.names)

    def iteration(self):
        self.words["train"] += self.per_iter

    def prune_step(self, before: dict, after: dict, clp_read: int, scanned: bool = True):
        """One pruning step: FLP's scan of the stored weights (if ``scanned``), CLP's filter reads, the write-back
        of new zeros."""
        if scanned:
            self.words["prune_flp_read"] += sum(int((before[n] != 0).sum()) for n in self.names)
        self.words["prune_clp_read"] += int(clp_read)
        self.words["prune_write"] += sum(int(((before[n] != 0) & (after[n] == 0)).sum()) for n in self.names)
        self.refresh(after)

    def summary(self) -> dict:
        w = self.words
        prune = w["prune_flp_read"] + w["prune_clp_read"] + w["prune_write"]
        separate = w["train"] + prune
        return {**w, "prune_total": prune, "separate_unit_total": separate, "shared_unit_total": w["train"],
                "saved": prune, "saved_frac": prune / separate if separate else None}

    def state(self) -> dict:
        return {"words": dict(self.words), "per_iter": self.per_iter}

    def load(self, st: dict):
        self.words = {k: int(v) for k, v in st["words"].items()}
        self.per_iter = int(st["per_iter"])


def workloads(module: torch.nn.Module, x: torch.Tensor) -> list:
    """Every conv/linear layer of ``module`` as a ``tiling.Workload`` with its input activations on ``x``."""
    from ..accel import tiling
    from .loop import trainable_layers

    seen, hooks = {}, []
    for name, m in trainable_layers(module):
        hooks.append(m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, inp[0])))
    was = module.training
    module.eval()
    with torch.no_grad():
        module(x)
    module.train(was)
    for h in hooks:
        h.remove()
    out = []
    for name, m in trainable_layers(module):
        w = m.weight.detach().numpy()
        a = seen[name].detach().numpy()
        if isinstance(m, torch.nn.Conv2d):
            out.append(tiling.Workload.conv(w, a, stride=m.stride, padding=m.padding, groups=m.groups, name=name))
        else:
            out.append(tiling.Workload.linear(w, a, name=name))
    return out


def efficiency(module: torch.nn.Module, x: torch.Tensor, fmt: str = "int8") -> dict:
    """Inference on ``x`` through ``accel/pnpu.py`` (adaptive input/weight zero skipping) and the dense design
    at ``fmt``: cycles, energy per inference and TOPS/W (2 ops per dense MAC over the energy), whole network;
    ``skip_speedup`` is PNPU's cycles against its own array without skipping."""
    from ..simulate import Run, Simulator

    sim = Simulator(Run(accels=["pnpu"], fmt=fmt, inferences=len(x)))
    tot = {a: {"cycles": 0.0, "dense_cycles": 0.0, "compute_pj": 0.0, "total_pj": 0.0} for a in ("dense", "pnpu")}
    macs = 0.0
    for wl in workloads(module, x):
        res = sim.layer(wl)
        macs += float(wl.macs)
        for a in tot:
            e = sim.energy(a, wl, res[a])
            tot[a]["cycles"] += res[a].cycles
            tot[a]["dense_cycles"] += res[a].dense_cycles
            tot[a]["compute_pj"] += e["compute"]
            tot[a]["total_pj"] += e["total"]
    per_inf = macs / len(x)
    for a, t in tot.items():
        t["tops_per_w"] = 2.0 * per_inf / t["total_pj"]
        t["tops_per_w_compute"] = 2.0 * per_inf / t["compute_pj"]
    return {"format": fmt, "images": len(x), "macs_per_inference": per_inf, **tot,
            "skip_speedup": tot["pnpu"]["dense_cycles"] / tot["pnpu"]["cycles"],
            "energy_gain_vs_dense": tot["dense"]["total_pj"] / tot["pnpu"]["total_pj"]}


__all__ = ["WeightMemory", "efficiency", "workloads"]
