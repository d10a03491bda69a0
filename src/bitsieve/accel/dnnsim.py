"""What the DNNsim family (DaDianNao, Stripes, Pragmatic, Laconic, Bit-Tactical) shares: an output-stationary
array of ``columns`` windows x ``rows`` filters x ``tiles`` filter sets, each PE a ``lanes``-wide inner
product over one channel brick (DNNsim ``core/src/OutputStationary.cpp``), fixed-point operands in
sign-magnitude (DNNsim converts every value to its magnitude, ``base/src/Array.cpp``), and activation
bricks read at padded input positions. The per-model rule is a cost per activation brick (or per brick x
weight) that ``tiling.dnnsim_streams`` turns into [steps, columns] and ``kernels.column_sync`` into cycles.

Two choices where bitsieve deliberately differs from DNNsim, each a parameter with DNNsim's behaviour
available: ``linear`` = 'tokens' (bitsieve: a linear layer's tokens, a transformer's sequence or a
classifier's batch, fill the columns like windows) or 'dnnsim' (``WindowFirstOutS`` runs one token at a time:
its input bricks go one call each to the columns in turn, ``kernels.issue_cycles``; from the second filter
pass on, a call reads the column it lands on, which holds that brick only when the pass starts at a multiple
of the columns, else zeros; the calls overlap, so at batch 1 'tokens', with one token on one column, takes
several times DNNsim's cycles, while with C or more tokens both do the same work per column); ``depthwise`` =
'tiles' (bitsieve: the channel bricks of a depthwise conv dealt to all tiles) or 'dnnsim' (DNNsim maps 16
channels to the 16 rows x 16 lanes of one tile and runs the bricks in turn); ``first_layer`` = 'keep' or
'dnnsim' (``first_layer_rewrite``).
"""
from __future__ import annotations

import numpy as np

from .. import formats
from ..planes import Planes, _bits
from ..errors import UserError
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

    def operands(self, wl, wplanes, aplanes, cfg):
        """(workload, activation magnitudes and signs [bricks, L], weight magnitudes [O, J, L] or None) as the
        model runs them: the layer's own, or with ``first_layer`` = 'dnnsim' DNNsim's rewrite of a 3-channel
        strided layer (``first_layer_rewrite``)."""
        L = cfg["lanes"]
        mags, signs = brick_values(aplanes)
        wm = None if wplanes is None else wplanes.magnitudes().astype(np.int64).reshape(wl.out_ch, -1, L)
        if cfg["first_layer"] == "dnnsim" and rewritten(wl):
            return first_layer_rewrite(wl, mags, signs, wm, L)
        return wl, mags, signs, wm

    def streams(self, wl, cfg) -> tiling.Streams:
        return tiling.dnnsim_issue_streams(wl, cfg["lanes"], cfg["columns"], cfg["rows"], cfg["tiles"],
                                           cfg["depthwise"])

    # ---- shared event counts --------------------------------------------------------------------------
    def events(self, wl, cfg, fmt, cycles, st: tiling.Streams, extra=None) -> dict:
        """Energy-model counts: PE-cycles (every PE is clocked every cycle, as BitSim charges them), MACs,
        and the SRAM bits of real operands (DNNsim's weight/activation buffer reads, padding not counted):
        a weight brick once per window set of C columns, an activation brick once per filter pass."""
        steps = st.idx.shape[0] * st.idx.shape[1] * st.repeat
        window_sets = wl.batch * -(-wl.windows // st.idx.shape[2])
        ev = {"pe_cycles": cycles * self.n_pe(cfg), "macs": wl.macs, "tile_steps": steps,
              **sram_operand_bits(wl, window_sets, st.passes, self.width(fmt))}
        if extra:
            ev.update(extra)
        return ev


def rewritten(wl) -> bool:
    """Whether DNNsim rewrites this layer (``Simulator::run``: 3 input channels and a stride above 1)."""
    return wl.kind == "conv" and wl.in_ch == 3 and wl.groups == 1 and max(wl.stride) > 1


def _space_to_depth(x: np.ndarray, s: int, hw: tuple[int, int]) -> np.ndarray:
    """[..., H, W, C] -> [..., ceil(H/s), ceil(W/s), C*s*s], channel (dy*s + dx)*C + c holding pixel
    (s*y + dy, s*x + dx) (DNNsim ``Array::reshape_first_layer_act``/``_wgt``, its x being our W axis)."""
    C = x.shape[-1]
    out = np.zeros(x.shape[:-3] + (-(-hw[0] // s), -(-hw[1] // s), C * s * s), x.dtype)
    for dy in range(s):
        for dx in range(s):
            sub = x[..., dy::s, dx::s, :]
            k = (dy * s + dx) * C
            out[..., :sub.shape[-3], :sub.shape[-2], k:k + C] = sub
    return out


def first_layer_rewrite(wl, mags, signs, wm, L):
    """DNNsim's rewrite of a 3-channel strided conv (``Simulator::run`` after zero padding): the padded input
    and the kernel are cut into s x s phases stacked as 3 s^2 channels, stride 1, no padding. Same integers
    and outputs, other bricks and steps. Returns (workload, activation magnitudes, signs, weight magnitudes)
    in the lanes of L like ``DnnsimModel.operands``."""
    s, C, N = wl.stride[0], wl.in_ch, wl.batch
    if wl.stride[0] != wl.stride[1]:
        raise UserError(f"{wl.name}: DNNsim's first-layer rewrite takes one stride, got {wl.stride}")
    Hp, Wp = wl.padded_hw
    (kh, kw), O = wl.kernel, wl.out_ch
    cb = -(-C // L)
    a = np.where(signs, -mags, mags).reshape(N, Hp, Wp, cb * L)[..., :C]
    a2 = _space_to_depth(a, s, (Hp, Wp))
    C2 = a2.shape[-1]
    cb2 = -(-C2 // L)
    a2 = np.concatenate([a2, np.zeros(a2.shape[:-1] + (cb2 * L - C2,), a2.dtype)], axis=-1).reshape(-1, L)
    w2 = None
    if wm is not None:
        w2 = _space_to_depth(wm.reshape(O, kh, kw, cb * L)[..., :C], s, (kh, kw))
        w2 = np.concatenate([w2, np.zeros(w2.shape[:-1] + (cb2 * L - C2,), w2.dtype)], axis=-1)
        w2 = w2.reshape(O, -1, L)
    return rewritten_shape(wl), np.abs(a2), a2 < 0, w2


def rewritten_shape(wl) -> tiling.Workload:
    """The workload (shapes only) of DNNsim's first-layer rewrite of ``wl``."""
    s = wl.stride[0]
    Hp, Wp = wl.padded_hw
    k2 = (-(-wl.kernel[0] // s), -(-wl.kernel[1] // s))
    return tiling.Workload.conv(np.zeros((wl.out_ch, wl.in_ch * s * s) + k2, np.float32),
                                in_hw=(-(-Hp // s), -(-Wp // s)), batch=wl.batch, name=wl.name)


def data_precision(mags, signs) -> int:
    """Bits needed by every value: highest set magnitude bit + 1, + 1 if a non-zero value is negative."""
    mx = int(mags.max(initial=0))
    p = max(mx.bit_length(), 1)
    return p + int(bool(np.any(signs & (mags != 0))))


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


def linear_calls(wl, cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DNNsim's calls for one token of a linear layer: call s = (filter pass p, input brick j), s = p * J + j;
    ``reads`` says whether the column it lands on (s mod C) holds brick j (j mod C), else it reads zeros."""
    J = -(-wl.cw // cfg["lanes"])
    s = np.arange(-(-wl.out_ch // (cfg["rows"] * cfg["tiles"])) * J)
    p, j = np.divmod(s, J)
    return p, j, (s % cfg["columns"]) == (j % cfg["columns"])


def linear_dnnsim(call_cost: np.ndarray, wl, cfg) -> float:
    """Cycles of the 'dnnsim' linear mode from the per-(token, call) costs [tokens, calls]."""
    from .kernels import issue_cycles

    return float(issue_cycles(call_cost, cfg["columns"]).sum())


def dense_streams(st: tiling.Streams, step: float) -> float:
    """Same-dataflow dense reference: every step of every stream costs ``step`` cycles."""
    return st.combine(np.full(st.idx.shape[0], st.idx.shape[1] * step, dtype=np.float64))


# ---- a ready DNNsim work folder ------------------------------------------------------------------------------
DNNSIM_COMMIT = "4748a60"
DNNSIM_PATCHES = (
    "base/include/base/Network.h, Network::fixed_point(): the fixed-point network is built as "
    "Network<uint16_t>(name, quantised, data_width, profiled) but the constructor takes (name, data_width, "
    "profiled, quantised); swap to (name, data_width, profiled, quantised). The converted network's width "
    "becomes 0/1, which the Potentials task uses as the bit width; compute cycles do not depend on it",
    "core/src/Utils.cpp: generateBoothEncodingTable and generateMinMaxTable hold 32768 entries and "
    "generateEffectualBitsTable 65535, but Booth-like recoding of a 15-bit magnitude can set bit 15 "
    "(32767 -> 0x8001) and the tables are then read past their end: BitPragmatic::process_pe never finishes "
    "on int16 traces (Pragmatic/Bit-Tactical-E with Booth); make all three MAX_VALUES = 65536. Required",
)
_MEMORY = """        cpu_clock_freq: "1GHz"
        dram_conf: "DDR4_3200"
        dram_size: "16GiB"
        gbuffer_act_levels: 1
        gbuffer_wgt_levels: 1
        gbuffer_act_size: "1GiB"
        gbuffer_wgt_size: "1GiB"
        gbuffer_act_banks: 32
        gbuffer_wgt_banks: 256
        gbuffer_act_bank_width: 256
        gbuffer_wgt_bank_width: 256
        gbuffer_act_read_delay: 2
        gbuffer_act_write_delay: 2
        gbuffer_wgt_read_delay: 2
        abuffer_rows: 2
        abuffer_read_delay: 1
        wbuffer_rows: 2
        wbuffer_read_delay: 1
        obuffer_rows: 2
        obuffer_write_delay: 1
        composer_inputs: 256
        composer_delay: 1
        ppu_inputs: 16
        ppu_delay: 1
"""


def dnnsim_experiment(accel: str, cfg: dict) -> tuple[str, dict]:
    """bitsieve accelerator + configuration -> (DNNsim architecture, its batch-file parameters)."""
    grid = {"lanes": cfg["lanes"], "columns": cfg.get("columns", 1), "rows": cfg["rows"], "tiles": cfg["tiles"],
            "pe_width": cfg.get("pe_width", 16)}
    tact = {"tactical": True, "lookahead_h": cfg.get("lookahead"), "lookaside_d": cfg.get("lookaside"),
            "search_shape": cfg.get("shape")}
    if accel == "dense":
        return "DaDianNao", dict(grid, columns=1)
    if accel == "stripes":
        if cfg["precision"] == "dynamic":
            return "ShapeShifter", dict(grid, group_size=cfg["group_size"], column_registers=cfg["column_registers"],
                                        minor_bit=cfg["minor_bit"])
        return "Stripes", grid
    if accel == "pragmatic":
        return "BitPragmatic", dict(grid, bits_first_stage=cfg["bits_first_stage"],
                                    column_registers=cfg["column_registers"], booth_encoding=cfg["booth"])
    if accel == "laconic":
        return "Laconic", dict(grid, booth_encoding=cfg["booth"])
    if accel == "tactical":
        if cfg["backend"] == "pragmatic":
            return "BitPragmatic", dict(grid, bits_first_stage=cfg["bits_first_stage"],
                                        column_registers=cfg["column_registers"], booth_encoding=cfg["booth"], **tact)
        return "ShapeShifter", dict(grid, group_size=cfg["group_size"], column_registers=cfg["group_registers"],
                                    minor_bit=cfg["minor_bit"], **tact)
    raise UserError(f"{accel} has no DNNsim counterpart (dense, stripes, pragmatic, laconic, tactical)")


def _proto_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return f'"{v}"' if isinstance(v, str) else str(v)


def batch_text(net: str, fmt: formats.Format, experiments: list[tuple[str, dict]]) -> str:
    """A DNNsim batch file (proto text, ``proto/batch.proto``): the quantised traces of ``net`` on every
    experiment, compute cycles of the WindowFirstOutS dataflow (memory sized never to spill: DNNsim's
    example values)."""
    out = ["simulate {", f'    network: "{net}"', "    batch: 0", '    model: "CSV"', '    data_type: "Fixed"',
           f"    data_width: {fmt.width}", "    quantised: true"]
    for arch, params in experiments:
        out += ["    experiment {", f'        architecture: "{arch}"', '        task: "Cycles"',
                '        dataflow: "WindowFirstOutS"']
        out += [f"        {k}: {_proto_value(v)}" for k, v in params.items()]
        out += [_MEMORY.rstrip("\n"), "    }"]
    return "\n".join(out + ["}"]) + "\n"


def layer_integers(wl: tiling.Workload, fmt: formats.Format) -> tuple[np.ndarray, np.ndarray]:
    """The integers the DNNsim models simulate: weights per output channel (``weight_spec``), activations per
    tensor (``act_spec``), both symmetric in the sign-magnitude format."""
    f = sign_magnitude(fmt)
    return f.quantize(wl.weight, axis=0)[0], f.quantize(wl.activation, axis=None)[0]


def dnnsim_traces(wl: tiling.Workload, fmt: formats.Format) -> tuple[np.ndarray, np.ndarray, str]:
    """(weights, activations, csv type) in DNNsim's layout: float32 holding the integers; a conv's arrays with
    the two spatial axes swapped ([K, C, kw, kh], [N, C, W, H]: DNNsim walks its axis 2 as x, the
    window-minor axis, and a kernel's axis 2 within a row), a linear layer's as [O, I] and [tokens, I]."""
    w, a = layer_integers(wl, fmt)
    if wl.kind == "linear":
        return w[:, :, 0, 0].astype(np.float32), a[0, :, 0, :].T.astype(np.float32), "fc"
    return (np.ascontiguousarray(w.transpose(0, 1, 3, 2)).astype(np.float32),
            np.ascontiguousarray(a.transpose(0, 1, 3, 2)).astype(np.float32), "conv")


def _npy(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def export_work_folder(net: str, workloads: list, fmt: formats.Format, experiments: list[tuple[str, dict]],
                       out, stripes_precision: str = "data", force: bool = False, cfgs: dict | None = None) -> dict:
    """Write a DNNsim work folder under ``out``: models/<net>/{model.csv, precision.txt},
    net_traces/<net>/{wgt-L.npy, act-L-0.npy}, <net>.batch and README.txt. Checks everything first, then
    writes each file atomically; refuses to overwrite without ``force``. ``cfgs`` ({accel: configuration}):
    the notes name the layers where a configuration keeps bitsieve's mapping (depthwise, linear,
    first_layer), so DNNsim's cycles differ there. Returns a summary."""
    from pathlib import Path

    from ..io import write_atomic

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if not out.parent.exists():
        raise UserError(f"folder {out.parent} does not exist")
    if "/" in net or not net:
        raise UserError(f"bad network name {net!r}")
    batch = out / f"{net}.batch"
    models, traces = out / "models" / net, out / "net_traces" / net
    names, notes, seen = [], [], set()
    cfgs = cfgs or {}

    def keeps(key: str) -> list[str]:
        """Accelerators that keep bitsieve's choice for ``key``."""
        return [a for a, c in cfgs.items() if a != "dense" and c.get(key, "tokens") != "dnnsim"]

    for wl in workloads:
        name = "".join(c if (c.isalnum() or c in "._-") else "-" for c in wl.name)
        if name in seen:
            raise UserError(f"two layers map to the same DNNsim name {name!r}")
        seen.add(name)
        names.append(name)
        if wl.activation is None:
            raise UserError(f"{wl.name}: no captured activations (DNNsim needs them; use a built-in model)")
        if wl.kind == "conv":
            if wl.stride[0] != wl.stride[1] or wl.padding[0] != wl.padding[1]:
                raise UserError(f"{wl.name}: DNNsim takes one stride and one padding per layer "
                                f"(got stride {wl.stride}, padding {wl.padding})")
            if wl.groups > 2 and not wl.depthwise:
                raise UserError(f"{wl.name}: DNNsim runs grouped convs of 2 groups or depthwise convs only "
                                f"(got {wl.groups} groups)")
            if wl.out_hw[0] != wl.out_hw[1]:
                notes.append(f"{wl.name}: output {wl.out_hw} is not square; DNNsim places window w at row "
                             "w / out_y instead of w / out_x, so its cycles differ")
            if rewritten(wl) and keeps("first_layer"):
                notes.append(f"{wl.name}: DNNsim rewrites a 3-channel strided first layer into "
                             f"{3 * wl.stride[0] ** 2} channels at stride 1; {', '.join(keeps('first_layer'))} "
                             "keep it (set ACCEL.first_layer=dnnsim to match)")
            if wl.depthwise and keeps("depthwise"):
                notes.append(f"{wl.name}: depthwise; DNNsim runs it on one tile, {', '.join(keeps('depthwise'))} "
                             "on all tiles (set ACCEL.depthwise=dnnsim to match)")
        elif wl.kind == "linear" and keeps("linear"):
            notes.append(f"{wl.name}: linear; DNNsim issues its input bricks to the columns one call at a time, "
                         f"{', '.join(keeps('linear'))} map tokens to the columns (set ACCEL.linear=dnnsim to "
                         "match)")
    targets = [batch, out / "README.txt", models / "model.csv", models / "precision.txt"] + [
        traces / f"{k}-{n}{'-0' if k == 'act' else ''}.npy" for n in names for k in ("wgt", "act")]
    clash = [str(t) for t in targets if t.exists()] if not force else []
    if clash:
        raise UserError(f"{clash[0]} exists (use --force to overwrite)")
    for d in (out, out / "models", models, out / "net_traces", traces):
        d.mkdir(exist_ok=True)
    csv, prec = [], []
    for name, wl in zip(names, workloads):
        w, a, kind = dnnsim_traces(wl, fmt)
        stride, pad = (wl.stride[0], wl.padding[0]) if kind == "conv" else (1, 0)
        csv.append(f"{name},{kind},{stride},{pad}")
        mags = np.abs(a).astype(np.int64)
        p = fmt.width if stripes_precision != "data" else data_precision(mags, a < 0)
        prec.append(p)
        write_atomic(traces / f"wgt-{name}.npy", _npy(w), force=force)
        write_atomic(traces / f"act-{name}-0.npy", _npy(a), force=force)
    write_atomic(models / "model.csv", "\n".join(csv) + "\n", force=force)
    zeros = ";".join("0" for _ in prec)
    write_atomic(models / "precision.txt", "magnitude (+1 of the sign), fraction, wgt_magnitude, wgt_fraction\n"
                 + ";".join(map(str, prec)) + "\n" + zeros + "\n" + ";".join(str(fmt.width) for _ in prec)
                 + "\n" + zeros + "\n", force=force)
    readme = (f"DNNsim work folder written by bitsieve for {net} ({fmt.name}, {len(workloads)} layers).\n"
              f"DNNsim: github.com/isakedo/DNNsim at {DNNSIM_COMMIT}, with two patches:\n"
              + "".join(f"  - {p}\n" for p in DNNSIM_PATCHES)
              + "Run (DNNsim reads ./DRAMSim2/ini and ./DRAMSim2/system.ini from the working folder):\n"
              f"  ln -s /path/to/DNNsim/DRAMSim2 DRAMSim2\n  /path/to/DNNsim/DNNsim {net}.batch\n"
              f"Compute cycles per layer: results/{net}/*_cycles.csv, column compute_cycles.\n"
              + ("Where DNNsim's cycles will differ from bitsieve's (this configuration):\n"
                 + "".join(f"  - {n}\n" for n in notes) if notes else ""))
    write_atomic(out / "README.txt", readme, force=force)
    write_atomic(batch, batch_text(net, fmt, experiments), force=force)
    return {"folder": str(out), "network": net, "format": fmt.name, "layers": names, "batch": str(batch),
            "experiments": [a for a, _ in experiments], "precision": prec, "notes": notes,
            "patches": list(DNNSIM_PATCHES), "dnnsim_commit": DNNSIM_COMMIT}
