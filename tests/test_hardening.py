"""Hostile and broken inputs through the real CLI (issue 14): each gives one line on stderr and exit code 2 (130
on Ctrl-C), allocates nothing unbounded, and leaves every file it did not own as it was. The inputs are built
in tmp_path; the table-driven cases run in-process, the generated ones through the CLI in a memory-limited process."""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bitsieve import cli, results
from bitsieve.io import folder_lock, write_atomic

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *args) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def fails(capsys, *args, code: int = 2) -> str:
    """Run a command that must fail cleanly: the exit code, one stderr line, no traceback. Returns the line."""
    rc, _, err = run(capsys, *args)
    assert rc == code, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err.strip()


@pytest.fixture
def model_pt(tmp_path) -> Path:
    p = tmp_path / "m.pt"
    torch.save({"fc.weight": torch.randn(8, 16)}, p)
    return p


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# ---- hostile model files ----------------------------------------------------------------------------------
def _zip_bomb(p: Path):
    torch.save({"w": torch.zeros(1000, 1000)}, p.with_suffix(".plain"))
    with zipfile.ZipFile(p.with_suffix(".plain")) as z, zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as o:
        for i in z.infolist():
            o.writestr(i.filename, z.read(i.filename))


HOSTILE = {
    "stride0": (lambda p: torch.save({"w": torch.zeros(1).expand(100_000, 100_000)}, p), "stride-0"),
    "sparse_coo": (lambda p: torch.save({"w": torch.eye(4).to_sparse()}, p), "sparse_coo"),
    "sparse_csr": (lambda p: torch.save({"w": torch.eye(4).to_sparse_csr()}, p), "sparse_csr"),
    "meta": (lambda p: torch.save({"w": torch.empty(4, 4, device="meta")}, p), "meta tensor"),
    "complex": (lambda p: torch.save({"w": torch.ones(4, 4, dtype=torch.complex64)}, p), "complex"),
    "quantised": (lambda p: torch.save({"w": torch.quantize_per_tensor(torch.ones(4, 4), 0.1, 0, torch.qint8)}, p),
                  "quantised"),
    "zip_bomb": (_zip_bomb, "zip bomb"),
    "legacy": (lambda p: torch.save({"w": torch.ones(4, 4)}, p, _use_new_zipfile_serialization=False), "legacy"),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_tensor_files_are_refused_before_allocating(case, tmp_path, capsys):
    make, words = HOSTILE[case]
    p = tmp_path / f"{case}.pt"
    make(p)
    assert words in fails(capsys, "profile", p)


def test_zero_size_tensors_are_skipped_with_a_note(tmp_path, capsys):
    p = tmp_path / "z.safetensors"
    save_file({"empty": torch.zeros(0, 4), "fc.weight": torch.randn(4, 4)}, p)
    rc, out, err = run(capsys, "profile", p, "--json")
    assert rc == 0 and "zero-size" in err and json.loads(out)["layers"]
    only = tmp_path / "only.safetensors"
    save_file({"empty": torch.zeros(0, 4)}, only)
    assert "zero-size" in fails(capsys, "profile", only)


def test_negative_onnx_dims(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[-1, 4], raw_data=np.ones(16, np.float32).tobytes())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    p = tmp_path / "neg.onnx"
    p.write_bytes(helper.make_model(graph).SerializeToString())
    assert onnx.load(str(p)).graph.initializer[0].dims == [-1, 4]
    assert "negative dimensions" in fails(capsys, "profile", p)


def test_fifo_as_model_is_refused_without_blocking(tmp_path, capsys):
    p = tmp_path / "pipe.pt"
    os.mkfifo(p)
    assert "not a regular file" in fails(capsys, "profile", p)


def test_newline_in_a_file_name_stays_on_one_line(tmp_path, capsys):
    p = tmp_path / "bad\nname.pt"
    p.write_bytes(b"garbage")
    assert "bad\\nname.pt" in fails(capsys, "profile", p)


# ---- outputs ------------------------------------------------------------------------------------------
def test_output_names_the_file_system_cannot_take(model_pt, tmp_path, capsys):
    long = tmp_path / ("x" * 245 + ".csv")  # fits, but left no room for the temporary file's name
    assert run(capsys, "profile", model_pt, "--csv", long)[0] == 0 and long.is_file()
    assert "bytes long" in fails(capsys, "profile", model_pt, "--csv", tmp_path / ("x" * 300 + ".csv"))
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    assert "not a folder" in fails(capsys, "profile", model_pt, "--csv", blocker / "x.csv")
    folder = tmp_path / "folder"
    folder.mkdir()
    assert "is a folder" in fails(capsys, "profile", model_pt, "--csv", folder, "--force")
    assert blocker.read_text() == "mine" and folder.is_dir()


def test_full_disk_is_one_line_and_leaves_no_temporary_file(model_pt, tmp_path, capsys, monkeypatch):
    import pathlib

    def full(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    out = tmp_path / "out"
    out.mkdir()
    assert "No space left" in fails(capsys, "profile", model_pt, "--csv", out / "p.csv")
    assert list(out.iterdir()) == []


def test_stdout_on_dev_full():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "bitsieve", "models", "--json"], stdout=full,
                           stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "No space left" in p.stderr


def test_prune_checks_every_output_before_writing_any(model_pt, tmp_path, capsys):
    (tmp_path / "out.json").mkdir()
    fails(capsys, "prune", model_pt, "--method", "truncate", "-o", tmp_path / "out.safetensors", "--force")
    assert not (tmp_path / "out.safetensors").exists()


def test_report_refuses_one_file_for_two_outputs(tmp_path, capsys):
    data = tmp_path / "rows.json"
    data.write_text(json.dumps([results.row("m", "*", "values", 1.0)]))
    x = tmp_path / "x"
    assert "same file" in fails(capsys, "report", data, "-o", x, "--csv", x)
    assert not x.exists()


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".r.csv.{dead}.abc123.tmp"
    live = tmp_path / f".r.csv.{os.getpid()}.def456.tmp"
    other = tmp_path / f".r.csv.{dead}.{os.getpid()}.ghi789.tmp"  # a live writer of r.csv.<dead>
    for f in (stale, live, other):
        f.write_text("being written")
    write_atomic(tmp_path / "r.csv", "a,b\n")
    assert not stale.exists() and live.exists() and other.exists()
    assert (tmp_path / "r.csv").read_text() == "a,b\n"


def test_ctrl_c_exits_130(model_pt, capsys, monkeypatch):
    import bitsieve.model as model_mod

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_mod, "load", interrupted)
    assert "interrupted" in fails(capsys, "profile", model_pt, code=130)


def test_compare_and_eval_on_broken_models(tmp_path, capsys):
    """compare on a file that is no model: its one line before any worker starts; eval of a pruned file with a
    NaN written into it: refused, not scored 0 %."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    assert "corrupted or not a PyTorch file" in fails(capsys, "compare", bad)
    from safetensors.numpy import load_file, save_file

    p = tmp_path / "p.safetensors"
    assert run(capsys, "prune", "lenet-mnist", "--method", "bitx:keep=4", "-o", p)[0] == 0
    d = {k: v.copy() for k, v in load_file(p).items()}
    next(iter(d.values())).flat[0] = np.nan
    save_file(d, p, metadata={"format": "pt"})
    assert "NaN or Inf" in fails(capsys, "eval", p, "--limit", "10")


# ---- bad values ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["profile", "{m}", "--activations", "-1"], "--activations"),
    (["prune", "{m}", "--method", "truncate", "-o", "{t}/o.safetensors", "--activations", "-1"], "--activations"),
    (["simulate", "{m}", "--accel", "stripes", "--format", "int8", "--set", "stripes.column_registers=-1"],
     "column_registers must be >= 0"),
    (["train", "lenet-mnist", "--method", "bitpruner", "--epochs", "-1"], "epochs must be > 0"),
    (["train", "lenet-mnist", "--method", "bitpruner", "--tolerance", "nan"], "tolerance must be a finite"),
    (["train", "lenet-mnist", "--method", "bitpruner", "--set", "lr=inf"], "lr must be a finite"),
])
def test_bad_values(args, words, model_pt, tmp_path, capsys):
    args = [a.format(m=model_pt, t=tmp_path) for a in args]
    assert words in fails(capsys, *args)


def test_eval_sidecars(tmp_path, capsys):
    from bitsieve.zoo import BUILTINS

    state = {k: v.detach().clone().contiguous() for k, v in BUILTINS["lenet-mnist"].load().state_dict().items()}
    weights = tmp_path / "p.safetensors"
    save_file(state, weights)
    weights.with_suffix(".json").write_text("[]")
    assert "eval needs a built-in" in fails(capsys, "eval", weights)
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key].view(-1)[0] = float("nan")
    save_file(state, weights)
    weights.with_suffix(".json").write_text(json.dumps({"model": "lenet-mnist"}))
    assert "NaN" in fails(capsys, "eval", weights)


# ---- result stores and report inputs ------------------------------------------------------------------
def _store(folder: Path) -> Path:
    with results.Store(folder) as st:
        st.commit_task("t", [results.row("m", "*", "values", float(i)) for i in range(200)])
    return folder / results.STORE_NAME


@pytest.mark.parametrize("text", ["[1, 2]", '{"rows": [[1]]}', '{"rows": 5}', '"a string"'])
def test_report_on_json_that_is_not_results(text, tmp_path, capsys):
    p = tmp_path / "x.json"
    p.write_text(text)
    fails(capsys, "report", p, "-o", tmp_path / "r.html")


def test_report_never_changes_a_foreign_or_empty_sqlite_file(tmp_path, capsys):
    foreign = tmp_path / "other.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE rows (a, b)")
    con.commit()
    con.close()
    (tmp_path / "empty.sqlite").write_bytes(b"")
    before = snapshot(tmp_path)
    assert "not a bitsieve result store" in fails(capsys, "report", foreign, "-o", tmp_path / "r.html")
    fails(capsys, "report", tmp_path / "empty.sqlite", "-o", tmp_path / "r.html")
    assert snapshot(tmp_path) == before


def test_a_corrupted_store_page_is_reported(tmp_path, capsys):
    db = _store(tmp_path / "sw")
    data = bytearray(db.read_bytes())
    page = 4096
    data[page + 100: 3 * page] = b"\x55" * (2 * page - 100)
    db.write_bytes(bytes(data))
    assert "damaged" in fails(capsys, "report", tmp_path / "sw", "-o", tmp_path / "r.html")
    sweep = tmp_path / "s.toml"
    sweep.write_text('models = ["lenet-mnist"]\naccelerators = ["dense"]\neval_limit = 0\nactivations = 1\n')
    assert "damaged" in fails(capsys, "sweep", sweep, "-o", tmp_path / "sw")


# ---- sweeps ------------------------------------------------------------------------------------------
@pytest.fixture
def sweep_file(tmp_path) -> Path:
    p = tmp_path / "s.toml"
    p.write_text('models = ["lenet-mnist"]\naccelerators = ["dense"]\neval_limit = 0\nactivations = 1\n')
    return p


def test_toml_nested_5000_deep(tmp_path, capsys):
    p = tmp_path / "deep.toml"
    p.write_text("models = " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested too deeply" in fails(capsys, "sweep", p)


def test_a_second_sweep_on_a_locked_folder_refuses(sweep_file, tmp_path, capsys):
    d = tmp_path / "out"
    d.mkdir()
    with folder_lock(d, "sweep"):
        assert "another sweep" in fails(capsys, "sweep", sweep_file, "-o", d)
    assert not (d / results.STORE_NAME).exists()


def test_ray_at_a_dead_address_fails_within_seconds(sweep_file, tmp_path, capsys):
    pytest.importorskip("ray")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    line = fails(capsys, "sweep", sweep_file, "-o", tmp_path / "out", "--backend", "ray", "--address",
                 f"127.0.0.1:{port}")
    assert "cannot reach Ray" in line and time.monotonic() - t0 < 15


# ---- training runs ---------------------------------------------------------------------------------------
def _run_folder(tmp_path, manifest) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


@pytest.mark.parametrize("manifest, words", [
    ([], "not a bitsieve training manifest"),
    ({"config": {}, "stages": {"r1": {"file": "../../etc/passwd"}}}, "names no checkpoint file"),
    ({"config": {}, "stages": {"r1": {"file": "r1.pt"}}}, "is missing"),
])
def test_resume_checks_the_manifest(manifest, words, tmp_path):
    from bitsieve.errors import UserError
    from bitsieve.train.loop import Checkpoints

    d = _run_folder(tmp_path, manifest)
    with pytest.raises(UserError, match=words):
        Checkpoints(d, {}, resume=True)


def test_resume_refuses_a_checkpoint_that_links_out_of_the_run(tmp_path):
    from bitsieve.errors import UserError
    from bitsieve.train.loop import Checkpoints

    outside = tmp_path / "outside.pt"
    torch.save({"w": torch.ones(1)}, outside)
    d = _run_folder(tmp_path, {"config": {}, "stages": {"r1": {"file": "r1.pt"}}})
    (d / "r1.pt").symlink_to(outside)
    with pytest.raises(UserError, match="leads out of the run folder"):
        Checkpoints(d, {}, resume=True)


def test_train_resume_with_a_bad_manifest_through_the_cli(tmp_path, capsys):
    d = _run_folder(tmp_path, [])
    assert "training manifest" in fails(capsys, "train", "lenet-mnist", "--method", "bitpruner", "--resume",
                                        "--output", d, "--train-limit", "10", "--test-limit", "10")


@pytest.mark.parametrize("after_s", [0.3, 0.8, 2.5])  # while the CLI is still importing, and while it works
def test_a_real_ctrl_c_exits_130(after_s):
    import signal

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "bitsieve", "profile", "efficientnet-lite0", "--activations", "8",
                          "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    time.sleep(after_s)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err == "bitsieve: interrupted\n"


# ---- generated malformed inputs ----------------------------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=int(os.environ.get("BITSIEVE_FUZZ_EXAMPLES", 40)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _seed_file(suffix: str, folder: Path) -> bytes:
    """A small valid model file of each kind, the starting point the fuzzer damages."""
    p = folder / f"seed{suffix}"
    w = torch.randn(4, 8)
    if suffix == ".safetensors":
        save_file({"fc.weight": w}, p)
    elif suffix == ".pt":
        torch.save({"fc.weight": w}, p)
    else:
        from onnx import TensorProto, helper, numpy_helper

        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                                  [numpy_helper.from_array(w.T.contiguous().numpy(), "w")])
        p.write_bytes(helper.make_model(graph).SerializeToString())
    return p.read_bytes()


#: a long-lived CLI process under a memory limit: each line on stdin is one command (a JSON list of arguments),
#: answered by one JSON line with its exit code and stderr; the heavy imports come first, then 1 GiB of
#: address space more than they took, so an unbounded allocation dies here instead of passing unnoticed
CLI_WORKER = """
import contextlib, io, json, resource, sys
from bitsieve import cli, model, planes, profile
import torch
vm = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), vm + (1 << 30)))
for line in sys.stdin:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = cli.main(json.loads(line))
        except BaseException as e:  # what escaped the CLI: the test fails on it
            rc = f"escaped {type(e).__name__}: {e}"
    print(json.dumps({"rc": rc, "err": err.getvalue()}), flush=True)
"""


@pytest.fixture(scope="module")
def cli_worker():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-c", CLI_WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)

    def call(*args) -> tuple[object, str]:
        p.stdin.write(json.dumps([str(a) for a in args]) + "\n")
        p.stdin.flush()
        reply = p.stdout.readline()
        assert reply, f"the CLI process died (memory limit?): {p.stderr.read()[-2000:]}"
        r = json.loads(reply)
        return r["rc"], r["err"]

    yield call
    p.stdin.close()
    p.wait(timeout=30)


class Payload:
    """Pickled, it asks the unpickler to create its mark file: the file exists only if the pickle's code ran."""

    def __init__(self, mark: Path):
        self.mark = mark

    def __reduce__(self):
        return (Path.touch, (self.mark,))


def _damaged(raw: bytearray, data) -> bytes:
    """Flipped, cut and inserted bytes anywhere (headers, pickles, protos)."""
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            raw[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[at:]
            if not raw:
                raw = bytearray(b"\0")
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    return bytes(raw)


def _one_clean_line(rc, err: str) -> None:
    assert rc in (0, 2), (rc, err)
    assert "Traceback" not in err and (rc == 0 or len(err.strip().splitlines()) == 1), err


@FUZZ
@given(suffix=st.sampled_from([".safetensors", ".pt", ".pt+payload", ".onnx"]), data=st.data())
def test_damaged_model_files_through_the_cli(suffix, data, cli_worker, tmp_path_factory):
    """Damaged model files (a .pt seed may carry a code payload) through `bitsieve profile` in the memory-limited
    CLI process: exit 0 or 2 with one line, no traceback, no file in the folder changed, the payload never ran."""
    folder = tmp_path_factory.mktemp("fuzz")
    mark = folder / "PAYLOAD_RAN"
    if suffix == ".pt+payload":
        suffix = ".pt"
        torch.save({"fc.weight": torch.randn(4, 8), "x": Payload(mark)}, folder / "seed.pt")
        seed = (folder / "seed.pt").read_bytes()
    else:
        seed = _seed_file(suffix, folder)
    p = folder / f"m{suffix}"
    p.write_bytes(_damaged(bytearray(seed), data))
    before = snapshot(folder)
    _one_clean_line(*cli_worker("profile", p, "--json"))
    assert not mark.exists() and snapshot(folder) == before


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list('[]{}=,."#\n abc123-_')), max_size=300))
def test_malformed_sweep_files_through_the_cli(text, cli_worker, tmp_path_factory):
    """Malformed sweep files through `bitsieve sweep` in the CLI process: one line, exit 2, nothing created."""
    folder = tmp_path_factory.mktemp("sweepfuzz")
    (folder / "s.toml").write_text(text)
    rc, err = cli_worker("sweep", folder / "s.toml", "-o", folder / "out")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert sorted(q.name for q in folder.iterdir()) == ["s.toml"]


def test_a_sweep_removes_a_killed_runs_temporary_csv(sweep_file, tmp_path, capsys):
    d = tmp_path / "out"
    d.mkdir()
    (d / ".results.csv.x1y2z3.tmp").write_text("half a csv")  # the name an older bitsieve used
    rc, _, err = run(capsys, "sweep", sweep_file, "-o", d, "--workers", "1", "--json")
    assert rc == 0, err
    assert sorted(p.name for p in d.iterdir()) == [".lock", "results.csv", "results.sqlite"]


def test_a_full_disk_under_the_store_is_one_line(tmp_path, monkeypatch):
    from bitsieve.errors import UserError

    with results.Store(tmp_path) as st:
        monkeypatch.setattr(st, "conn", _Failing(st.conn))
        with pytest.raises(UserError, match="database or disk is full"):
            st.commit_task("t", [results.row("m", "*", "values", 1.0)])


class _Failing:
    """A connection whose inserts fail the way SQLite does on a full disk."""

    def __init__(self, conn):
        self.conn = conn

    def __getattr__(self, name):
        return getattr(self.conn, name)

    def executemany(self, *a):
        raise sqlite3.OperationalError("database or disk is full")


def test_an_interrupted_sweep_says_what_it_kept(sweep_file, tmp_path, capsys, monkeypatch):
    import bitsieve.sweep as sweep_mod

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_mod, "run", interrupted)
    line = fails(capsys, "sweep", sweep_file, "-o", tmp_path / "out", code=130)
    assert "interrupted: finished tasks are stored in" in line and "again to resume" in line


def test_bad_sweep_options_are_refused_before_the_folder_is_made(sweep_file, tmp_path, capsys):
    assert "--workers" in fails(capsys, "sweep", sweep_file, "-o", tmp_path / "out", "--workers", "-1")
    assert "backend" in fails(capsys, "sweep", sweep_file, "-o", tmp_path / "out", "--backend", "mpi")
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_hostile_files_load_under_a_memory_limit(tmp_path, cli_worker):
    """The stride-0 view (37 GiB if materialised) and the zip bomb are refused inside 1 GiB of address space."""
    for case, words in (("stride0", "stride-0"), ("zip_bomb", "zip bomb")):
        p = tmp_path / f"{case}.pt"
        HOSTILE[case][0](p)
        rc, err = cli_worker("profile", p)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and words in err, err  # refused, not out of memory
