"""Cross-check against DNNsim (isakedo/DNNsim, the commit in each table): per-layer compute cycles of
dense (DaDianNao), Stripes, ShapeShifter (Stripes dynamic), Pragmatic, Laconic and Bit-Tactical E/P on the
same integers, every configuration in CONFIGS. The tables in tests/data/dnnsim/ are DNNsim's output
(tests/data/dnnsim/generate.py runs a built DNNsim on bitsieve's export and writes them); this test only
re-runs bitsieve's models. Conv layers must match exactly; linear layers are mapped differently on purpose
(accel/dnnsim.py) and are not compared."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from bitsieve import formats
from bitsieve.accel import tiling
from bitsieve.simulate import Run, Simulator

DATA = Path(__file__).parent / "data" / "dnnsim"
CASES = ("lenet-mnist", "mtcnn-rnet", "resnet-layer", "depthwise-layer", "first-layer")
# where bitsieve's default differs from DNNsim on purpose, these cases run with DNNsim's choice
CASE_SETS = {"depthwise-layer": {"depthwise": "dnnsim"}, "first-layer": {"first_layer": "dnnsim"}}
CONFIGS = (
    [("dense", {"tiles": t}) for t in (16, 1)]
    + [("stripes", {"tiles": t}) for t in (16, 1)]
    + [("stripes", {"precision": "dynamic", "group_size": 1, "column_registers": 0, "tiles": t}) for t in (16, 1)]
    + [("pragmatic", {"column_registers": r, "booth": b, "tiles": t})
       for r in (0, 1, 2) for b in (True, False) for t in (16, 1)]
    + [("laconic", {"booth": b, "tiles": t}) for b in (True, False) for t in (16, 1)]
    + [("tactical", {"column_registers": r, "booth": b, "tiles": t})
       for r in (0, 1, 2) for b in (True, False) for t in (16, 1)]
    + [("tactical", {"backend": "precision", "group_size": 1, "group_registers": 0, "tiles": t}) for t in (16, 1)]
)


def _exact(w: np.ndarray, a: np.ndarray, q: int) -> tuple[np.ndarray, np.ndarray]:
    """Every filter and the activations reach the format's maximum: symmetric quantisation is the identity."""
    w[:, 0, 0, 0] = q
    a[0, 0, 0, 0] = q
    return w.astype(np.float32), a.astype(np.float32)


def _resnet_layer(fmt: str) -> tiling.Workload:
    """A ResNet-18 layer-2 3x3 conv (128 -> 128 channels, 28 x 28, padding 1) of seeded integers whose
    symmetric quantisation is the identity (every filter and the activations reach the format's maximum), so
    DNNsim and bitsieve read the same integers."""
    q = formats.get(fmt).qmax
    rng = np.random.default_rng(15)
    w = np.clip(np.rint(rng.normal(size=(128, 128, 3, 3)) * q / 8), -q, q)
    w[rng.random(w.shape) < 0.5] = 0
    a = np.clip(np.rint(np.maximum(rng.normal(size=(1, 128, 28, 28)), 0) * q / 6), 0, q)
    a[rng.random(a.shape) < 0.3] = 0
    return tiling.Workload.conv(*_exact(w, a, q), padding=1, name="res2")


def _depthwise_layer(fmt: str) -> tiling.Workload:
    """A MobileNet-style 3x3 depthwise conv (40 channels: two full bricks and a partial one, 14 x 14, padding 1)
    of seeded signed integers."""
    q = formats.get(fmt).qmax
    rng = np.random.default_rng(16)
    w = np.clip(np.rint(rng.normal(size=(40, 1, 3, 3)) * q / 4), -q, q)
    w[rng.random(w.shape) < 0.3] = 0
    a = np.clip(np.rint(rng.normal(size=(1, 40, 14, 14)) * q / 6), -q, q)
    a[rng.random(a.shape) < 0.3] = 0
    return tiling.Workload.conv(*_exact(w, a, q), padding=1, groups=40, name="dw")


def _first_layer(fmt: str) -> tiling.Workload:
    """An RGB stem: 3 -> 16 channels, 3x3, stride 2, padding 1, 32 x 32, seeded signed integers (DNNsim
    rewrites it into 12 channels at stride 1)."""
    q = formats.get(fmt).qmax
    rng = np.random.default_rng(17)
    w = np.clip(np.rint(rng.normal(size=(16, 3, 3, 3)) * q / 4), -q, q)
    a = np.clip(np.rint(rng.normal(size=(1, 3, 32, 32)) * q / 4), -q, q)
    return tiling.Workload.conv(*_exact(w, a, q), stride=2, padding=1, name="stem")


@lru_cache(maxsize=None)
def case_workloads(case: str, fmt: str) -> tuple[str, list]:
    """(DNNsim network name, workloads) of a case."""
    if case == "resnet-layer":
        return case, [_resnet_layer(fmt)]
    if case == "depthwise-layer":
        return case, [_depthwise_layer(fmt)]
    if case == "first-layer":
        return case, [_first_layer(fmt)]
    from bitsieve import model

    m = model.load(case, activations=1)
    return case, [tiling.from_layer(layer) for layer in m.layers if layer.kind in ("conv", "linear")]


def _tables(case: str, fmt: str) -> dict:
    path = DATA / f"{case}-{fmt}.json"
    return json.loads(path.read_text())


@pytest.mark.parametrize("fmt", ["int16", "int8"])
@pytest.mark.parametrize("case", CASES)
def test_dnnsim_compute_cycles_match(case, fmt):
    """Every layer in every configuration: conv layers as configured, linear layers with linear=dnnsim
    (DNNsim's one-token-at-a-time schedule; dense needs no switch)."""
    doc = _tables(case, fmt)
    assert doc["dnnsim_commit"] == "4748a60" and len(doc["tables"]) == len(CONFIGS)
    _, workloads = case_workloads(case, fmt)
    bad, checked = [], 0
    for table, (accel, sets) in zip(doc["tables"], CONFIGS):
        assert (table["accel"], table["set"]) == (accel, json.loads(json.dumps(sets)))
        extra = CASE_SETS.get(case, {})
        sims = {kind: Simulator(Run(accels=[accel], fmt=fmt, sets={accel: dict(sets, **extra, **more)}))
                for kind, more in (("conv", {}), ("linear", {} if accel == "dense" else {"linear": "dnnsim"}))}
        for wl in workloads:
            got = sims[wl.kind].layer(wl)[accel].cycles
            want = table["compute_cycles"][wl.name]
            checked += 1
            if got != want:
                bad.append(f"{accel} {sets} {wl.name}: bitsieve {got:.0f}, DNNsim {want}")
    assert checked and not bad, "\n".join(bad)
