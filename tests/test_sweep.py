"""Sweeps: grid expansion, validation with the line at fault, local and Ray backends, kill-and-resume."""
import collections
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bitsieve import results, sweep
from bitsieve.cli import main
from bitsieve.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

# A small real grid: two small real models, two formats, two group sizes, three method settings, a few
# accelerators, accuracy on a handful of real samples. 8 tasks.
SMALL = """\
name = "small"
models = ["mtcnn-rnet", "lenet-mnist"]
formats = ["fp32", "int8"]
groups = [64, 16]
accelerators = {accels}
eval_limit = 16
activations = 1

[methods.bitx]
keep = [3, 6]

[methods.bitwave]
"""


def _accels(n=None):
    try:
        from bitsieve.accel import ACCELERATORS
    except ImportError:
        return []
    names = list(ACCELERATORS)
    return names if n is None else names[:n]


def small_sweep(tmp_path, accels=None) -> Path:
    p = tmp_path / "small.toml"
    acc = [a for a in ("dense", "stripes", "bitx", "bitwave") if a in _accels()] if accels is None else accels
    p.write_text(SMALL.format(accels="[" + ", ".join(f'"{a}"' for a in acc) + "]"))
    return p


def _write(tmp_path, text) -> Path:
    p = tmp_path / "s.toml"
    p.write_text(textwrap.dedent(text))
    return p


# ---- grid and validation ------------------------------------------------------------------------------------
def test_grid_expansion(tmp_path):
    sw = sweep.parse(_write(tmp_path, """\
        models = ["mtcnn-rnet", "mtcnn-pnet"]
        formats = ["fp32", "int8", "bf16"]
        groups = [64, 16]
        [methods.bitx]
        keep = [3, 4]
        score = ["l1", "l2"]
        [methods.truncate]
        keep = 6
        [methods.bitwave]
        """))
    assert sw.methods == ["bitx:keep=3,score=l1", "bitx:keep=3,score=l2", "bitx:keep=4,score=l1",
                          "bitx:keep=4,score=l2", "truncate:keep=6", "bitwave"]
    assert len(sw.tasks) == 2 * 3 * 2
    assert len({t.key for t in sw.tasks}) == len(sw.tasks)
    assert {(t.model, t.format, t.group) for t in sw.tasks} == {
        (m, f, g) for m in ("mtcnn-rnet", "mtcnn-pnet") for f in ("fp32", "int8", "bf16") for g in (64, 16)}
    assert all(t.methods == tuple(sw.methods) for t in sw.tasks)


def test_resolve_follows_the_sweep_format_where_it_can():
    [st] = sweep.resolve("bitx:keep=4", "int8", 16)
    assert (st.params["format"], st.params["group"], st.params["keep"]) == ("int8", 16, 4)
    [st] = sweep.resolve("bitwave", "fp32", 16)  # an integer method in a float sweep: its own format
    assert not st.params["format"].startswith("fp") and st.params["group"] == 16


BAD = [
    ("models = [\"mtcnn-rnet\"]\nformats = [\"fp32\" \"int8\"]\ngroups = [64]\n", 2, "not valid TOML"),
    ("models = [\"mtcnn-rnet\"]\nformats = [\"fp32\"\n", 2, "not valid TOML"),
    ("models = [\"mtcnn-rnet\"]\nmodles = [\"x\"]\n", 2, "unknown key 'modles'"),
    ("# models\nmodels = [\n  \"mtcnn-rnet\",\n  \"resnet-9000\",\n]\n", 4, "unknown model 'resnet-9000'"),
    ("models = [\"mtcnn-rnet\"]\n\nformats = [\"fp32\", \"fp33\"]\n", 3, "unknown format 'fp33'"),
    ("models = [\"mtcnn-rnet\"]\ngroups = [64,\n 65]\n", 3, "1..64"),
    ("models = [\"mtcnn-rnet\"]\n[methods.truncate]\nkeep = 6\n[methods.bitz]\nkeep = 3\n", 4,
     "unknown method 'bitz'"),
    ("models = [\"mtcnn-rnet\"]\n[methods.truncate]\nkeep = 6\n\n[methods.bitx]\nkep = [3, 4]\n", 6,
     "no parameter 'kep'"),
    ("models = [\"mtcnn-rnet\"]\n[methods.truncate]\nkeep = 6\n[methods.bitx]\nscore = \"l2\"\nkeep = [3, 99]\n", 6,
     "99"),
    ("models = [\"mtcnn-rnet\"]\n[methods.bitx]\nscore = [\"l2\", \"l7\"]\n", 3, "l7"),
    ("models = [\"mtcnn-rnet\"]\neval_limit = -3\n", 2, "eval_limit"),
    ("models = [\"mtcnn-rnet\"]\nmethods = [\"bitx\"]\n", 2, "tables"),
    ("formats = [\"fp32\"]\n", None, "no models"),
    ("models = []\n", 1, "must not be empty"),
]


@pytest.mark.parametrize("text,line,msg", BAD)
def test_bad_sweep_files_name_the_line(tmp_path, text, line, msg):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(UserError) as e:
        sweep.parse(p)
    assert msg in str(e.value)
    if line is not None:
        assert str(e.value).startswith(f"{p}:{line}: "), str(e.value)


def test_unknown_accelerator_names_the_line(tmp_path):
    if not _accels():
        pytest.skip("bitsieve.accel.ACCELERATORS not available yet")
    p = _write(tmp_path, """\
        models = ["mtcnn-rnet"]
        accelerators = [
            "dense",
            "stripez",
        ]
        """)
    with pytest.raises(UserError, match=rf"^{p}:4: unknown accelerator 'stripez'"):
        sweep.parse(p)


def test_cli_rejects_before_any_work(tmp_path, capsys):
    p = _write(tmp_path, 'models = ["mtcnn-rnet"]\n[methods.bitx]\nkeep = [0]\n')
    out = tmp_path / "out"
    assert main(["sweep", str(p), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{p}:3:" in err and err.count("\n") == 1
    assert not out.exists()


# ---- running ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The small sweep run once, uninterrupted, through the CLI with the local pool: (sweep file, output)."""
    d = tmp_path_factory.mktemp("ref")
    p = small_sweep(d)
    out = d / "out"
    assert main(["sweep", str(p), "-o", str(out), "--workers", "2", "--json"]) == 0
    return p, out


def _multiset(rows):
    return collections.Counter((*results.key(r), r["value"]) for r in rows)


def test_local_sweep_small_grid(reference, tmp_path, capsys):
    p, out = reference
    rows = results.load(out)
    sw = sweep.parse(p)
    assert {(r["model"], r["format"], r["group"]) for r in rows} == {(t.model, t.format, t.group) for t in sw.tasks}
    assert {r["method"] for r in rows} == {"", *sw.methods}
    keys = [results.key(r) for r in rows]
    assert len(keys) == len(set(keys)), "duplicated rows"
    metrics = {r["metric"] for r in rows}
    assert {"zero_bit_frac", "occupancy_s00", "essential_hist_00", "changed_bit_frac"} <= metrics
    if _accels():
        assert {"cycles", "speedup", "energy_pj"} <= metrics
        assert {r["accel"] for r in rows} - {"", "original"} == set(sw.accels)
        # every design's accuracy as it computes, next to the methods' (accel '')
        assert {r["accel"] for r in rows if r["metric"] == "accuracy_ci_low"} >= set(sw.accels) | {"original"}
    assert (out / "results.csv").exists()
    assert len(results.load(out / "results.csv")) == len(rows)
    # running again does nothing and changes nothing
    capsys.readouterr()
    assert main(["sweep", str(p), "-o", str(out), "--json"]) == 0
    assert '"ran": 0' in capsys.readouterr().out.splitlines()[-1]
    assert _multiset(results.load(out)) == _multiset(rows)
    # a different sweep in the same folder is refused
    p2 = _write(tmp_path, 'models = ["mtcnn-pnet"]\n')
    assert main(["sweep", str(p2), "-o", str(out)]) == 2
    assert "different sweep" in capsys.readouterr().err
    # and the report renders from the sweep folder
    assert main(["report", str(out), "-o", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").stat().st_size > 50_000


def _done(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _sweep_cmd(p, out, *extra):
    return [sys.executable, "-c", "import sys; from bitsieve.cli import main; sys.exit(main())", "sweep", str(p),
            "-o", str(out), "--json", *extra]


@pytest.mark.slow
def test_kill_and_resume(reference, tmp_path):
    """SIGKILL a sweep after some tasks are stored, then finish it: the same rows as an uninterrupted run."""
    p, ref = reference
    workers = 2
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    total = len(sweep.parse(p).tasks)
    db = out / results.STORE_NAME
    for stop_at in (2,):
        proc = subprocess.Popen(_sweep_cmd(p, out, "--workers", str(workers)), env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        t0 = time.time()
        while _done(db) < stop_at and proc.poll() is None and time.time() - t0 < 120:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: its pool workers must die with it
        proc.wait()
        assert stop_at <= _done(db) < total, "the kill must land in the middle of the sweep"
    time.sleep(0.5)
    if workers > 1:  # no orphaned pool workers left running
        ps = subprocess.run(["ps", "-o", "pid=,stat=", "-s", str(proc.pid)], capture_output=True, text=True).stdout
        left = [line for line in ps.splitlines() if line.split()[1][0] != "Z"]  # zombies are dead already
        assert not left, f"orphaned workers {left}"
    r = subprocess.run(_sweep_cmd(p, out, "--workers", str(workers)), env=env, cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert '"skipped": ' in r.stdout and '"skipped": 0' not in r.stdout
    got, want = results.load(out), results.load(ref)
    keys = [results.key(x) for x in got]
    assert len(keys) == len(set(keys)), "duplicated rows after resume"
    assert _multiset(got) == _multiset(want), "lost or changed rows after resume"
    assert got == want  # even the order: rows are read back in task order


@pytest.mark.slow
def test_ray_backend_gives_the_same_rows(reference, tmp_path):
    ray = pytest.importorskip("ray")
    p, local = reference
    remote = tmp_path / "ray"
    # a local Ray instance started by the test; the sweep connects to it by address like to a cluster
    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                   runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        address = ctx.address_info["gcs_address"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        r = subprocess.run(_sweep_cmd(p, remote, "--backend", "ray", "--address", address), env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        ray.shutdown()
    assert results.load(remote) == results.load(local)


def test_inline_sweep_without_accuracy_or_accelerators(tmp_path):
    p = _write(tmp_path, """\
        models = ["mtcnn-pnet"]
        formats = ["fp32", "int8"]
        eval_limit = 0
        accelerators = []
        [methods.truncate]
        keep = [4, 6]
        """)
    summary = sweep.run(sweep.parse(p), tmp_path / "o", workers=1)
    assert summary["ran"] == 2
    rows = results.load(tmp_path / "o")
    assert {r["method"] for r in rows} == {"", "truncate:keep=4", "truncate:keep=6"}
    assert not any(r["metric"].startswith("accuracy") or r["accel"] for r in rows)
    z = results.pivot(rows, "zero_bit_frac")
    for f in ("fp32", "int8"):  # fewer planes kept -> more zero bits
        assert z[("mtcnn-pnet", "", "", f, 64)] < z[("mtcnn-pnet", "truncate:keep=6", "", f, 64)] \
            < z[("mtcnn-pnet", "truncate:keep=4", "", f, 64)]


def test_extended_sweep_runs_only_the_new_tasks(tmp_path):
    base = 'eval_limit = 0\naccelerators = []\nformats = ["int8"]\n[methods.truncate]\nkeep = 4\n'
    p = _write(tmp_path, 'models = ["mtcnn-pnet"]\n' + base)
    assert sweep.run(sweep.parse(p), tmp_path / "o", workers=1)["ran"] == 1
    p.write_text('models = ["mtcnn-pnet", "mtcnn-rnet"]\n' + base)  # one more model: only its task runs
    assert sweep.run(sweep.parse(p), tmp_path / "o", workers=1)["ran"] == 1
    assert {r["model"] for r in results.load(tmp_path / "o")} == {"mtcnn-pnet", "mtcnn-rnet"}
    p.write_text('models = ["mtcnn-rnet"]\n' + base)  # a task dropped: its rows would linger, so refuse
    with pytest.raises(UserError, match="different sweep"):
        sweep.run(sweep.parse(p), tmp_path / "o", workers=1)
    assert sweep.run(sweep.parse(p), tmp_path / "o", workers=1, force=True)["ran"] == 1
    assert {r["model"] for r in results.load(tmp_path / "o")} == {"mtcnn-rnet"}


def test_design_axes_sweep_with_the_method_and_set(tmp_path):
    """[designs.bitx] keep is a grid axis next to the method's keep; --set configures every variant; a method
    and its design at the same keep cost exactly the design's cycles on the original weights."""
    p = _write(tmp_path, """\
        models = ["lenet-mnist"]
        accelerators = ["bitx"]
        eval_limit = 0
        activations = 1
        [methods.bitx]
        keep = [2, 5]
        [designs.bitx]
        keep = [2, 5]
        """)
    sw = sweep.parse(p, sets={"bitx": {"rows": "8"}})
    assert sw.tasks[0].designs == (("bitx", (("keep", "2"), ("rows", "8"))), ("bitx", (("keep", "5"), ("rows", "8"))))
    assert sweep.run(sw, tmp_path / "o", workers=1)["ran"] == 1
    with results.Store(tmp_path / "o") as st:
        rows = st.rows()
    cyc = {(r["accel"], r["method"]): r["value"] for r in rows if r["layer"] == "*" and r["metric"] == "cycles"}
    for k in (2, 5):
        name = f"bitx[keep={k},rows=8]"
        assert cyc[(name, f"bitx:keep={k}")] == cyc[(name, "")]
    assert cyc[("bitx[keep=2,rows=8]", "")] < cyc[("bitx[keep=5,rows=8]", "")]
    bad = _write(tmp_path, """\
        models = ["lenet-mnist"]
        [designs.bitx]
        keep = [0]
        """)
    with pytest.raises(UserError, match="s.toml:2.*keep"):
        sweep.parse(bad)
