"""The training loop shared by BitPruner and SCFLP: real task data, seeded repeatable training, progress,
checkpoints, and resume after a kill without repeating finished stages.

A training job is a sequence of named *stages* (a BitPruner round, an SCFLP epoch). ``Checkpoints`` stores each
finished stage's tensors (``<stage>.pt``, plain tensors, loaded with ``weights_only=True``) and its summary
(``manifest.json``), both written atomically, the manifest last. A job run again with ``resume`` loads the
finished stages instead of re-running them, so a killed run loses at most the stage it was in. Everything random
(data order, initialisation, channel sampling) is derived from the seed and the stage name, never from a
running random state, so a resumed run gives the same numbers as an uninterrupted one (on one thread:
``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import UserError

err = Console(stderr=True)


def derive_seed(seed: int, *keys) -> int:
    """A 63-bit seed from the run seed and any keys (stage name, epoch, layer): stable across runs and Python
    versions (no ``hash()``)."""
    h = hashlib.sha256(repr((int(seed),) + tuple(str(k) for k in keys)).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


# ---- task data ------------------------------------------------------------------------------------------
@dataclass
class TaskData:
    """Real data of one task, preprocessed for its model. ``val`` decides whether a round is kept; ``test`` is
    what is reported. ``logprob`` turns the model's output into log-probabilities of the classes."""

    task: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    logprob: Callable[[object], torch.Tensor]
    note: str = ""
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    freeze_bn: bool = False  # keep batch-norm statistics fixed while training (small batches would wreck them)
    eval_batch: int = 2000  # samples per forward pass when evaluating (bounded by activation memory)


def _mnist_logprob(out):
    return torch.log_softmax(out, dim=1)


def _faces_logprob(out):
    return torch.log(out[-1].clamp_min(1e-12))  # MTCNN heads return softmax probabilities; face prob is last


def _shift_flip(x: torch.Tensor, gen: torch.Generator, shift: int = 2) -> torch.Tensor:
    """Random horizontal flip and a shift of up to ``shift`` pixels (edge-replicated), per image."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = torch.nn.functional.pad(x, (shift,) * 4, mode="replicate")
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    h, w = x.shape[-2:]
    return torch.stack([pad[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def task_data(model: str, seed: int = 0, train_limit: int | None = None, val_size: int | None = None,
              test_limit: int | None = None) -> TaskData:
    """The real data a built-in model is trained and judged on.

    - ``lenet-mnist``: MNIST train minus its last ``val_size`` (default 5000) images for training, those 5000
      for validation (the keep/reject decisions), the full 10k test set for the reported accuracy.
    - ``mtcnn-rnet`` / ``mtcnn-onet``: the 200 LFW-subset crops (100 faces, 100 not). Half of each class (drawn
      with the seed) fine-tunes, with flips and shifts; the other half is never trained on and serves as both the
      validation and the reported test set (there is no more labelled face data offline). Accuracy = face
      probability > 0.5 equals the label.
    - ``mobilenet-v2``: the 1300-image ImageNet validation subset, shuffled with the seed and cut into disjoint
      parts: ``train_limit`` (default 256) images fine-tune, the next ``val_size`` (default 256) decide the
      rounds, the next ``test_limit`` (default 512) are held out for the reported accuracy. Batch-norm
      statistics stay frozen (a few hundred images in small batches cannot re-estimate them).
    """
    from .. import data
    from ..zoo import BUILTINS

    if model not in BUILTINS:
        raise UserError(f"train needs a built-in model (its architecture and task); got {model!r} "
                        f"(trainable: lenet-mnist, mtcnn-rnet, mtcnn-onet, mobilenet-v2)")
    task = BUILTINS[model].task
    if task == "mnist":
        from ..zoo import lenet

        xs, ys = data.mnist("train")
        xt, yt = data.mnist("test")
        nval = 5000 if val_size is None else int(val_size)
        xtr, ytr, xv, yv = xs[:-nval], ys[:-nval], xs[-nval:], ys[-nval:]
        if train_limit:
            xtr, ytr = xtr[:train_limit], ytr[:train_limit]
        if test_limit:
            xt, yt = xt[:test_limit], yt[:test_limit]
        return TaskData(task, lenet.preprocess(xtr), torch.from_numpy(ytr), lenet.preprocess(xv),
                        torch.from_numpy(yv), lenet.preprocess(xt), torch.from_numpy(yt), _mnist_logprob,
                        note=f"MNIST: train {len(xtr)}, validation {len(xv)} (end of train split), "
                             f"test {len(xt)} (test split)")
    if task == "faces":
        from ..zoo import mtcnn

        stage = model.split("-", 1)[1]
        images, labels = data.faces()
        rng = np.random.default_rng(derive_seed(seed, "faces-split"))
        train_idx = []
        for c in (0, 1):
            idx = np.flatnonzero(labels == c)
            train_idx.extend(rng.choice(idx, size=len(idx) // 2, replace=False).tolist())
        tr = np.zeros(len(images), bool)
        tr[train_idx] = True
        te = ~tr  # held out: never trained on
        if train_limit:
            tr[np.flatnonzero(tr)[train_limit:]] = False
        if test_limit:
            te[np.flatnonzero(te)[test_limit:]] = False
        x = mtcnn.preprocess(images, stage)
        y = torch.from_numpy(labels)
        trt, tet = torch.from_numpy(tr), torch.from_numpy(te)
        return TaskData(task, x[trt], y[trt], x[tet], y[tet], x[tet], y[tet], _faces_logprob,
                        note=f"LFW subset: fine-tune {int(tr.sum())} crops (flips/shifts), held out "
                             f"{int(te.sum())} for validation and test", augment=_shift_flip)
    if task == "imagenet" and model == "mobilenet-v2":
        from ..zoo import mobilenet

        items = list(data.imagenet_subset())
        ntr, nval = train_limit or 256, 256 if val_size is None else int(val_size)
        nte = test_limit or 512
        if ntr + nval + nte > len(items):
            raise UserError(f"the ImageNet subset has {len(items)} images; train {ntr} + validation {nval} + "
                            f"test {nte} do not fit (lower --train-limit / --test-limit)")
        order = np.random.default_rng(derive_seed(seed, "imagenet-split")).permutation(len(items))
        parts = np.split(order[:ntr + nval + nte], [ntr, ntr + nval])
        x = [mobilenet.preprocess([items[i][0] for i in p]) for p in parts]
        y = [torch.tensor([items[i][1] for i in p], dtype=torch.int64) for p in parts]
        return TaskData(task, x[0], y[0], x[1], y[1], x[2], y[2], _mnist_logprob,
                        note=f"ImageNet val subset (1300 images): fine-tune {ntr}, validation {nval}, held-out test "
                             f"{nte} (disjoint, drawn with the seed); batch-norm statistics frozen",
                        freeze_bn=True, eval_batch=50)
    raise UserError(f"train supports lenet-mnist, mtcnn-rnet/-onet and mobilenet-v2; {model} is a {task} model")


def correct(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, logprob, params: dict | None = None,
            batch: int = 2000) -> np.ndarray:
    """bool [n]: whether each sample's top-1 prediction is right (per-sample, for paired comparisons);
    ``params`` override the module's weights (projected weights)."""
    hits = []
    was = module.training
    module.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = forward(module, x[i:i + batch], params)
            hits.append((logprob(out).argmax(1) == y[i:i + batch]).numpy())
    module.train(was)
    return np.concatenate(hits) if hits else np.zeros(0, bool)


def accuracy(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, logprob, params: dict | None = None,
             batch: int = 2000) -> float:
    """Top-1 accuracy in percent (0..100); ``params`` override the module's weights (projected weights)."""
    return 100.0 * float(correct(module, x, y, logprob, params, batch).sum()) / max(len(x), 1)


def forward(module, x, params: dict | None = None):
    if not params:
        return module(x)
    return torch.func.functional_call(module, params, (x,), strict=False)


# ---- fitting --------------------------------------------------------------------------------------------
@dataclass
class FitConfig:
    """One fine-tuning / training stage. ``steps`` (if set) overrides ``epochs``."""

    epochs: float = 1.0
    steps: int | None = None
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    distill: float = 0.0  # weight of KL(teacher || student) added to the label loss (0: labels only)


def fit(module: torch.nn.Module, data: TaskData, cfg: FitConfig, *, seed: int, stage: str,
        params_fn: Callable[[], dict] | None = None, after_step: Callable[[int], None] | None = None,
        teacher: torch.nn.Module | None = None, progress: "Reporter | None" = None,
        metric_fn: Callable[[], float] | None = None, step0: int = 0,
        optimizer: torch.optim.Optimizer | None = None, order_key: str | None = None) -> dict:
    """Train ``module`` for one stage with Adam. ``params_fn()`` gives the weights the forward pass uses (for a
    straight-through estimator: ``w + (q(w) - w).detach()``); ``after_step(global_step)`` runs after each
    optimiser step (pruning, masks). Data order depends only on (seed, ``order_key`` or the stage, epoch):
    stages given one key see the same batches (a method and its baselines)."""
    n = len(data.x_train)
    per_epoch = max(1, math.ceil(n / cfg.batch))
    total = cfg.steps if cfg.steps is not None else max(1, int(round(cfg.epochs * per_epoch)))
    opt = optimizer or torch.optim.Adam(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    module.train()
    if data.freeze_bn:
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    if teacher is not None:
        teacher.eval()
    losses, step, epoch = [], 0, 0
    task = progress.start(stage, total) if progress else None
    t0 = time.perf_counter()
    while step < total:
        gen = torch.Generator().manual_seed(derive_seed(seed, order_key or stage, "epoch", epoch))
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch):
            if step >= total:
                break
            idx = order[i:i + cfg.batch]
            x, y = data.x_train[idx], data.y_train[idx]
            if data.augment is not None:
                x = data.augment(x, gen)
            opt.zero_grad(set_to_none=True)
            out = forward(module, x, params_fn() if params_fn else None)
            lp = data.logprob(out)
            loss = torch.nn.functional.nll_loss(lp, y)
            if teacher is not None and cfg.distill > 0:
                with torch.no_grad():
                    tp = data.logprob(teacher(x)).exp()
                loss = loss + cfg.distill * torch.nn.functional.kl_div(lp, tp, reduction="batchmean")
            loss.backward()
            opt.step()
            step += 1
            if after_step is not None:
                after_step(step0 + step)
            losses.append(loss.item())
            if task is not None:
                progress.advance(task, step, epoch + i / n, float(np.mean(losses[-50:])))
        epoch += 1
    metric = metric_fn() if metric_fn else None
    if task is not None:
        progress.finish(task, metric)
    return {"steps": step, "epochs": round(step / per_epoch, 3), "loss": float(np.mean(losses[-50:])),
            "wall_s": round(time.perf_counter() - t0, 2)}


class Reporter:
    """Progress of a training job on stderr: one bar per stage with epoch, loss and the stage's metric."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.p = Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("epoch {task.fields[epoch]:.2f}  loss {task.fields[loss]:.4f}  "
                                     "{task.fields[metric]}"), TimeElapsedColumn(),
                          console=err, disable=not enabled, transient=False)

    def __enter__(self):
        self.p.__enter__()
        return self

    def __exit__(self, *a):
        self.p.__exit__(*a)

    def start(self, stage: str, total: int):
        return self.p.add_task(stage, total=total, epoch=0.0, loss=float("nan"), metric="")

    def advance(self, task, step: int, epoch: float, loss: float):
        if step % 10 == 0 or step == 1:  # the first step too: a stage of a few steps shows its loss
            self.p.update(task, completed=step, epoch=epoch, loss=loss)

    def finish(self, task, metric: float | None):
        self.p.update(task, completed=self.p.tasks[task].total,
                      metric="" if metric is None else f"val {metric:.2f}%")

    def note(self, text: str):
        if self.enabled:
            self.p.console.print(text)


# ---- checkpoints ----------------------------------------------------------------------------------------
def _atomic(path: Path, write: Callable[[Path], None]):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _stage_file(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) + ".pt"


class Checkpoints:
    """A checkpoint directory: ``manifest.json`` (config + finished stages with their summaries) and one
    ``.pt`` file of tensors per finished stage. ``directory=None`` keeps everything in memory (no resume)."""

    def __init__(self, directory, config: dict, resume: bool = False, force: bool = False):
        self.dir = Path(directory) if directory is not None else None
        self.config = json.loads(json.dumps(config))
        self.stages: dict[str, dict] = {}
        self._mem: dict[str, dict] = {}
        self.ran: list[str] = []  # stages computed in this process (not loaded)
        self.loaded: list[str] = []
        if self.dir is None:
            return
        if self.dir.exists() and not self.dir.is_dir():
            raise UserError(f"{self.dir} is a file, not a checkpoint folder")
        if not self.dir.parent.exists():
            raise UserError(f"folder {self.dir.parent} does not exist")
        man = self.dir / "manifest.json"
        if man.exists():
            try:
                old = json.loads(man.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                raise UserError(f"{man} is unreadable: {e} (remove the folder or use --force)") from None
            if resume:
                self._check_manifest(man, old)
                if old.get("config") != self.config:
                    diff = sorted(k for k in set(old.get("config", {})) | set(self.config)
                                  if old.get("config", {}).get(k) != self.config.get(k))
                    raise UserError(f"{self.dir} holds a run with other settings ({', '.join(diff)}); "
                                    f"use the same options to resume, or --force to start over")
                self.stages = old.get("stages", {})
            elif not force:
                raise UserError(f"{self.dir} already holds a training run (use --resume to continue it, "
                                f"--force to start over)")
            else:
                for f in self.dir.glob("*.pt"):
                    f.unlink()
        elif self.dir.exists() and any(self.dir.iterdir()) and not force:
            raise UserError(f"{self.dir} exists and is not a bitsieve checkpoint folder (use --force)")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_manifest()

    def _check_manifest(self, man: Path, old) -> None:
        """A manifest to resume from: our two tables, and for each finished stage a checkpoint file that exists
        directly in the run folder (a manifest must not lead the loader anywhere else)."""
        def bad(why):
            return UserError(f"{man} is not a bitsieve training manifest: {why} (use --force to start over)")

        if not isinstance(old, dict) or not isinstance(old.get("config"), dict) \
                or not isinstance(old.get("stages"), dict):
            raise bad("it lacks the config and stages tables")
        for name, info in old["stages"].items():
            f = info.get("file") if isinstance(info, dict) else None
            if not isinstance(f, str) or not f or Path(f).name != f or f in (".", ".."):
                raise bad(f"stage {name!r} names no checkpoint file in the run folder")
            if (self.dir / f).resolve().parent != self.dir.resolve():  # a symlink out of the folder
                raise bad(f"the checkpoint {f} of stage {name!r} leads out of the run folder")
            if not (self.dir / f).is_file():
                raise UserError(f"{man}: the checkpoint {f} of stage {name!r} is missing "
                                "(use --force to start over)")

    def _write_manifest(self):
        if self.dir is None:
            return
        text = json.dumps({"config": self.config, "stages": self.stages}, indent=1)
        _atomic(self.dir / "manifest.json", lambda p: p.write_text(text))

    def done(self, name: str) -> dict | None:
        """The summary of a finished stage (without its file name), or None."""
        info = self.stages.get(name)
        return None if info is None else {k: v for k, v in info.items() if k != "file"}

    def tensors(self, name: str) -> dict:
        if self.dir is None:
            return self._mem[name]
        path = self.dir / self.stages[name]["file"]
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a damaged file
            obj = e
        if not isinstance(obj, dict):
            raise UserError(f"cannot read the checkpoint {path}: damaged or not a bitsieve checkpoint "
                            "(use --force to start over)")
        return obj

    def save(self, name: str, tensors: dict, info: dict):
        tensors = {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in tensors.items()}
        info = json.loads(json.dumps(info))
        if self.dir is None:
            self._mem[name] = tensors
            self.stages[name] = {**info, "file": None}
            return
        fname = _stage_file(name)
        _atomic(self.dir / fname, lambda p: torch.save(tensors, p))
        self.stages[name] = {**info, "file": fname}
        self._write_manifest()

    def stage(self, name: str, run: Callable[[], tuple[dict, dict]], restore: Callable[[dict], None]) -> dict:
        """Run a stage once: a finished one is restored from its tensors (``restore``) and its summary returned;
        otherwise ``run()`` -> (tensors, info) is executed and saved."""
        info = self.done(name)
        if info is not None:
            restore(self.tensors(name))
            self.loaded.append(name)
            return info
        tensors, info = run()
        self.save(name, tensors, info)
        self.ran.append(name)
        return self.done(name)

    def write_json(self, filename: str, obj):
        if self.dir is None:
            return None
        text = json.dumps(obj, indent=1)
        _atomic(self.dir / filename, lambda p: p.write_text(text))
        return self.dir / filename

    def write_text(self, filename: str, text: str):
        if self.dir is None:
            return None
        _atomic(self.dir / filename, lambda p: p.write_text(text))
        return self.dir / filename


def trainable_layers(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The conv and linear layers whose weights the methods prune, in module order."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
