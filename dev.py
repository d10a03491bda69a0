#!/usr/bin/env python3
"""Set up a local .venv and run the main job or the tests. Needs only Python 3.11.

    python3 dev.py demo   # set up, then the main job on the built-in default model
    python3 dev.py test   # set up, then the test suite
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".bitsieve-setup"
INPUTS = [ROOT / "pyproject.toml", ROOT / "requirements-nodeps.txt"]


def run(*cmd, **kw):
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def setup():
    """Create .venv once: the local CPU torch first (so nothing pulls a CUDA build), then the package."""
    if STAMP.exists() and all(STAMP.stat().st_mtime >= p.stat().st_mtime for p in INPUTS):
        return
    if not PY.exists():
        run(sys.executable, "-m", "venv", VENV)
    pip = [PY, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run(*pip, "torch==2.13.0")
    run(*pip, "-e", f"{ROOT}[models,test,ray]")
    run(*pip, "--no-deps", "-r", ROOT / "requirements-nodeps.txt")
    STAMP.touch()


def main():
    task = sys.argv[1] if len(sys.argv) > 1 else "demo"
    setup()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if task == "demo":
        run(VENV / "bin" / "bitsieve", "compare", *(sys.argv[2:] or ["efficientnet-lite0", "-o", "report.html", "--force"]), env=env, cwd=ROOT)
    elif task == "test":
        run(PY, "-m", "pytest", "-q", *sys.argv[2:], env=env, cwd=ROOT)
    elif task != "setup":
        sys.exit(f"unknown task {task!r}: demo, test or setup")


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as e:
        sys.exit(e.returncode)
