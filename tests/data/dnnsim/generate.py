"""Regenerate the DNNsim reference tables of tests/test_dnnsim_parity.py (facts from DNNsim, checked in).

    python tests/data/dnnsim/generate.py /path/to/DNNsim-checkout [CASE ...]  # built and patched
                                                                            # (accel.dnnsim.DNNSIM_PATCHES)

For every case (lenet-mnist, mtcnn-rnet with one captured input, one ResNet-sized 3x3 layer of seeded
integers; int16 and int8) it writes a bitsieve export of the case with one DNNsim experiment per
configuration in CONFIGS, runs ``DNNsim <net>.batch --quiet`` in that folder and stores DNNsim's per-layer
``compute_cycles`` in tests/data/dnnsim/<case>-<format>.json with the DNNsim commit and the command.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path


HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from bitsieve import formats  # noqa: E402
from bitsieve.accel import ACCELERATORS  # noqa: E402
from bitsieve.accel.dnnsim import DNNSIM_COMMIT, DNNSIM_PATCHES, dnnsim_experiment, export_work_folder  # noqa: E402
from test_dnnsim_parity import CASES, CONFIGS, case_workloads  # noqa: E402


def compute_cycles(results: Path) -> dict:
    """results/<net>/<name>.csv -> {layer: compute cycles of sample 0}."""
    lines = results.read_text().splitlines()
    start = lines.index("Per sample scalar results:") + 1
    rows = list(csv.DictReader(lines[start:]))
    out = {}
    for r in rows:
        if not r.get("Layer"):
            break
        if r["Sample"] == "0":
            out[r["Layer"]] = int(r["compute_cycles"])
    return out


def main(dnnsim: Path) -> None:
    binary = dnnsim / "DNNsim"
    for case in sys.argv[2:] or CASES:
        for fmt_name in ("int16", "int8"):
            fmt = formats.get(fmt_name)
            net, workloads = case_workloads(case, fmt_name)
            experiments = []
            for accel, overrides in CONFIGS:
                cfg = ACCELERATORS[accel].configure(overrides)
                experiments.append(dnnsim_experiment(accel, cfg))
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp) / "work"
                export_work_folder(net, workloads, fmt, experiments, work)
                (work / "DRAMSim2").symlink_to(dnnsim / "DRAMSim2")
                cmd = [str(binary), f"{net}.batch", "--quiet"]
                subprocess.run(cmd, cwd=work, check=True, capture_output=True)
                tables = []
                files = sorted((work / "results" / net).glob("*_cycles.csv"))
                by_prefix = {}
                for f in files:
                    by_prefix[f.name] = compute_cycles(f)
                for (accel, overrides), (arch, params) in zip(CONFIGS, experiments):
                    name = _result_name(arch, params)
                    tables.append({"accel": accel, "set": overrides, "dnnsim": arch, "compute_cycles": by_prefix[name]})
            doc = {"case": case, "format": fmt_name, "network": net, "dnnsim_commit": DNNSIM_COMMIT,
                   "dnnsim_patches": list(DNNSIM_PATCHES),
                   "command": "bitsieve.accel.dnnsim.export_work_folder(...) then `DNNsim " + net + ".batch --quiet` "
                              "in the folder (tests/data/dnnsim/generate.py)",
                   "tables": tables}
            (HERE / f"{case}-{fmt_name}.json").write_text(json.dumps(doc, indent=1) + "\n")
            print(case, fmt_name, len(tables), "tables")


def _result_name(arch: str, p: dict) -> str:
    """DNNsim's results file name for one experiment (Simulator::run, Architecture::filename and overrides)."""
    name = {"BitPragmatic": "BitTacticalE", "ShapeShifter": "BitTacticalP"}[arch] if p.get("tactical") else arch
    base = f"{name}_AM1GiB_WM1GiB_L{p['lanes']}_C{p['columns']}_R{p['rows']}_T{p['tiles']}_BP{p['pe_width']}"
    if arch == "BitPragmatic":
        base += f"_B{p['bits_first_stage']}_CR{p['column_registers']}" + ("_booth" if p["booth_encoding"] else "")
    elif arch == "ShapeShifter":
        base += f"_GS{p['group_size']}_CR{p['column_registers']}" + ("_MB" if p["minor_bit"] else "")
    elif arch == "Laconic":
        base += "_booth" if p["booth_encoding"] else ""
    return base + "_cycles.csv"


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
