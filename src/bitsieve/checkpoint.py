"""Safetensors checkpoints read tensor by tensor, so a 7B model never has to fit in memory.

A checkpoint is one ``.safetensors`` file, a Hugging Face folder (``config.json`` plus one or many shards, with
or without ``model.safetensors.index.json``) or that index file. Shard headers are parsed here (names, dtypes,
shapes, file order); data is read with ``safetensors.safe_open`` one slice at a time and the file is closed
again, so the memory-mapped pages of a shard are released after each read. ``config.json`` (Hugging Face
``model_type``) names each tensor's role: embeddings and norms are not matmuls, attention and MLP projections
are linear layers, GPT-2's ``Conv1D`` stores its linear weights transposed, 3-D weights are Conv1d kernels.
``write_shard`` streams a shard of the same layout back out, one tensor at a time.
"""
from __future__ import annotations

import json
import os
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError, one_line

INDEX_SUFFIX = ".safetensors.index.json"
FORMAT_OF = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F64": "fp32"}  # fp64 is profiled as fp32
FLOATS = set(FORMAT_OF)
MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header
CHUNK_VALUES = 1 << 23  # values worked on at once: memory is bounded by the chunk, not the largest tensor
EMBEDDING = re.compile(r"(^|\.)(embed_tokens|embed_positions|wte|wpe|word_embeddings|position_embeddings|"
                       r"token_type_embeddings|shared|embed_in|tok_embeddings|embedding)(\.weight)?$")
NORM = re.compile(r"norm|(^|\.)ln", re.IGNORECASE)
ATTENTION = re.compile(r"(q_proj|k_proj|v_proj|o_proj|qkv_proj|query|key|value|c_attn|q_attn|attn|attention|"
                       r"wq|wk|wv|wo)")
MLP = re.compile(r"(gate_proj|up_proj|down_proj|gate_up_proj|mlp|fc1|fc2|c_fc|intermediate|w1|w2|w3|"
                 r"feed_forward|ffn|dense_h_to_4h|dense_4h_to_h)")
GPT2_CONV1D = ("gpt2",)  # model types whose transformers.Conv1D stores weights as [in, out]


@dataclass(frozen=True)
class Entry:
    """One tensor of a checkpoint and the role it plays. ``shape`` is as stored; a ``transposed`` weight
    (GPT-2's Conv1D, [in, out]) is read as [out, in] like every other linear weight."""

    key: str
    file: Path
    dtype: str  # safetensors dtype: BF16, F16, F32 ...
    shape: tuple
    kind: str  # 'conv' | 'linear' | 'other'
    role: str  # 'attention' | 'mlp' | 'lm_head' | 'linear' | 'conv' | 'embedding' | 'norm' | 'bias' | 'other'
    transposed: bool = False
    tied: bool = False  # a token embedding that is also the LM head (tie_word_embeddings)

    @property
    def name(self) -> str:
        return self.key.removesuffix(".weight")

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def weight_shape(self) -> tuple:
        """The shape the rest of bitsieve sees: [O, I] linear, [O, I, 1, K] Conv1d."""
        if self.transposed:
            return tuple(reversed(self.shape))
        if self.kind == "conv" and len(self.shape) == 3:
            return (self.shape[0], self.shape[1], 1, self.shape[2])
        return self.shape

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOATS

    def row_chunks(self):
        """Row ranges of at most CHUNK_VALUES values (at least one row). Groups never cross a row of the
        dot-product axis and int scales are per output channel (axis 0), so counts and row-local methods
        give the same result chunk by chunk as on the whole tensor."""
        rows = self.weight_shape[0]
        step = max(1, CHUNK_VALUES // max(self.size // max(rows, 1), 1))
        for start in range(0, rows, step):
            yield start, min(rows, start + step)


def role_of(key: str, shape: tuple, config: dict) -> tuple[str, str, bool]:
    """(kind, role, transposed) of one stored tensor, from its name, rank and the model's config."""
    leaf = key.rsplit(".", 1)[-1]
    if len(shape) == 1 or leaf == "bias":
        return "other", "bias" if leaf == "bias" else ("norm" if NORM.search(key) else "other"), False
    if EMBEDDING.search(key):
        return "other", "embedding", False
    if len(shape) in (3, 4):
        return "conv", "conv", False
    if len(shape) != 2:
        return "other", "other", False
    name = key.removesuffix(".weight")
    transposed = config.get("model_type") in GPT2_CONV1D and re.search(r"(c_attn|q_attn|c_proj|c_fc)$", name)
    if name.endswith("lm_head") or name.endswith("embed_out") or name == "output":
        role = "lm_head"
    elif MLP.search(name):
        role = "mlp"
    elif ATTENTION.search(name):
        role = "attention"
    else:
        role = "linear"
    return "linear", role, bool(transposed)


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is read by this module (rather than as a .pt/.onnx file)."""
    return path.is_dir() or path.name.endswith(INDEX_SUFFIX) or path.suffix.lower() == ".safetensors"


def _header(path: Path) -> dict:
    """The JSON header of one safetensors file, checked against the file's size."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            (n,) = struct.unpack("<Q", head) if len(head) == 8 else (None,)
            if n is None or n > min(MAX_HEADER, size - 8):
                raise ValueError("header size out of range")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end > size:
            raise ValueError(f"data ends at {8 + n + end:,} but the file has {size:,} bytes")
        return header
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error) as exc:
        raise UserError(f"cannot read {path}: corrupted or truncated safetensors file ({one_line(str(exc))})") from None


class Checkpoint:
    """The shards of one checkpoint, their tensors in file order, and its config (``{}`` without one)."""

    def __init__(self, path):
        path = Path(path)
        if not path.exists():
            raise UserError(f"cannot read {path}: no such file")
        self.root = path if path.is_dir() else path.parent
        index = path if path.name.endswith(INDEX_SUFFIX) else None
        if path.is_dir():
            found = sorted(path.glob("*" + INDEX_SUFFIX))
            index = found[0] if found else None
        if index is not None:
            self.index = self._read_json(index)
            wmap = self.index.get("weight_map") if isinstance(self.index, dict) else None
            if not isinstance(wmap, dict) or not wmap:
                raise UserError(f"cannot read {index}: it has no weight_map")
            names = list(dict.fromkeys(wmap.values()))
            for n in names:
                if not isinstance(n, str) or Path(n).name != n or n in ("..", "."):
                    raise UserError(f"cannot read {index}: shard name {one_line(str(n))!r} is not a file in its folder")
            self.files = [self.root / n for n in names]
            missing = [f.name for f in self.files if not f.is_file()]
            if missing:
                raise UserError(f"cannot read {index}: shard {missing[0]} is missing")
        elif path.is_dir():
            self.index = None
            self.files = sorted(path.glob("*.safetensors"))
            if not self.files:
                raise UserError(f"cannot read {path}: it is a directory with no .safetensors files "
                                "(a checkpoint folder holds config.json and *.safetensors)")
        else:
            self.index, self.files = None, [path]
            if not path.is_file():
                raise UserError(f"cannot read {path}: not a regular file")
        cfg = self.root / "config.json"
        self.config_path = cfg if cfg.is_file() else None
        self.config = self._read_json(cfg) if self.config_path else {}
        if not isinstance(self.config, dict):
            raise UserError(f"cannot read {cfg}: not a JSON object")
        self.name = self.root.name if (path.is_dir() or index is not None) else path.stem
        self.metadata: dict[Path, dict] = {}
        self.entries: list[Entry] = []
        for f in self.files:
            header = _header(f)
            self.metadata[f] = header.pop("__metadata__", None) or {}
            for key, v in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
                if self.index is not None and self.index["weight_map"].get(key) != f.name:
                    continue  # the index decides which shard holds a tensor
                kind, role, transposed = role_of(key, tuple(v["shape"]), self.config)
                self.entries.append(Entry(key, f, v["dtype"], tuple(v["shape"]), kind, role, transposed))
        self._tie_embedding()
        if self.index is not None:
            absent = set(self.index["weight_map"]) - {e.key for e in self.entries}
            if absent:
                raise UserError(f"cannot read {self.root}: tensor {sorted(absent)[0]} of the index is not in its shard")

    def _tie_embedding(self) -> None:
        """With tied word embeddings (transformers' default) and no LM head tensor, the token embedding is also
        the LM head's matmul: it becomes a linear layer so the largest GEMM of a decoder is not left out."""
        if not self.config or not self.config.get("tie_word_embeddings", True):
            return
        if any(e.role == "lm_head" for e in self.entries):
            return
        vocab = self.config.get("vocab_size")
        for i, e in enumerate(self.entries):
            if e.role == "embedding" and len(e.shape) == 2 and (vocab is None or e.shape[0] == vocab) \
                    and re.search(r"(embed_tokens|wte|word_embeddings|embed_in|tok_embeddings)", e.key):
                self.entries[i] = Entry(e.key, e.file, e.dtype, e.shape, "linear", "lm_head", False, tied=True)
                return

    def layers(self, include_other: bool = False) -> list[Entry]:
        """The float tensors to work on (conv/linear ones unless ``include_other``); zero-size ones are skipped
        with a note on stderr, and having none is a UserError."""
        empty = [e.key for e in self.entries if e.is_float and e.size == 0]
        out = [e for e in self.entries if e.is_float and e.size and (include_other or e.kind != "other")]
        where = self.root if len(self.files) > 1 else self.files[0]
        if not out:
            raise UserError(f"no weight tensors in {where}" + ("" if include_other else " (no conv or linear weights)")
                            + (f"; {len(empty)} zero-size tensors skipped" if empty else ""))
        if empty:
            print(f"bitsieve: note: {one_line(str(where))}: skipped {len(empty)} zero-size tensors "
                  f"({one_line(', '.join(empty[:3]))}{', ...' if len(empty) > 3 else ''})", file=sys.stderr)
        return out

    @staticmethod
    def _read_json(path: Path):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {path}: not valid JSON ({one_line(str(exc))})") from None

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    def dtype(self) -> str:
        """The format name of most of the matmul weights' values (fp32 when there are none)."""
        by = {}
        for e in self.entries:
            if e.kind != "other" and e.dtype in FORMAT_OF:
                by[FORMAT_OF[e.dtype]] = by.get(FORMAT_OF[e.dtype], 0) + e.size
        return max(by, key=by.get) if by else "fp32"

    def read(self, e: Entry, start: int = 0, stop: int | None = None):
        """Rows ``start:stop`` (of the [O, ...] weight as bitsieve sees it) as a torch tensor in the file's dtype.
        The shard is opened and closed around each read, so its mapped pages do not pile up."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(e.file), framework="pt") as f:
                sl = f.get_slice(e.key)
                if e.transposed:
                    t = sl[:, start:stop].t().contiguous()
                else:
                    t = sl[start:stop] if e.shape else f.get_tensor(e.key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"cannot read {e.file}: corrupted or truncated safetensors file "
                            f"({one_line(str(exc))})") from None
        return t.reshape((t.shape[0], *e.weight_shape[1:])) if e.kind == "conv" else t

    def describe(self) -> str:
        """One line: what was read and which layer kinds config.json decided."""
        count = {}
        for e in self.entries:
            count[e.role] = count.get(e.role, 0) + 1
        roles = ", ".join(f"{n} {r}" for r, n in count.items())
        cfg = f"config.json model_type {self.model_type}" if self.config_path else "no config.json: kinds from names"
        tied = [e.name for e in self.entries if e.tied]
        if tied:
            cfg += f"; {tied[0]} is also the LM head (tied embeddings): profiled as a linear layer"
        return f"{len(self.files)} shard(s), {len(self.entries)} tensors ({roles}); {cfg}"


def write_shard(dest: Path, entries: list[Entry], tensor_of, metadata: dict) -> None:
    """Write one safetensors file holding ``entries`` (same dtypes and shapes as stored) in order, asking
    ``tensor_of(entry)`` for each tensor's data only when it is written, so one tensor is in memory at a
    time. The header is known up front because pruning keeps every dtype and shape."""
    header, offset = {}, 0
    for e in entries:
        nbytes = e.size * _itemsize(e.dtype)
        header[e.key] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps({"__metadata__": {str(k): str(v) for k, v in metadata.items()}, **header},
                      separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with dest.open("wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for e in entries:
            t = tensor_of(e)
            if e.transposed:
                t = t.t()
            t = t.contiguous().reshape(e.shape)
            data = t.view(-1).view(_byte_dtype()).numpy() if t.numel() else b""
            if len(data) != header[e.key]["data_offsets"][1] - header[e.key]["data_offsets"][0]:
                raise RuntimeError(f"{e.key}: {len(data)} bytes, expected another size")
            f.write(memoryview(data))
        f.flush()
        os.fsync(f.fileno())


def _global_channels(steps, todo: dict, chunks) -> dict:
    """BBS's ``beta`` keeps the output channels with the largest scales over the whole model at full precision:
    {step index: {tensor key: bool per output channel}}, from a first pass over the checkpoint that applies
    the steps before it (as ``bitsieve.methods.apply_model`` does with the whole model in memory)."""
    import numpy as np

    from . import formats
    from .methods import _channel_scales, bbs

    sens: dict = {}
    for k, step in enumerate(steps):
        if step.name != "bbs" or step.params["beta"] <= 0:
            continue
        width = formats.get(step.params["format"]).width
        scales = [np.concatenate([_channel_scales(w, width) for _, _, w, _, _ in chunks(e, k, sens)])
                  for e in todo.values()]
        thr = bbs.global_threshold(scales, step.params["beta"])
        sens[k] = {key: bbs.sensitive_channels(s, step.params["beta"], thr, step.params["channels"])
                   for key, s in zip(todo, scales)}
    return sens


def _add(a, b):
    """Counts of one method step over two chunks of a tensor (every count is additive)."""
    from dataclasses import replace

    return replace(a, **{k: getattr(a, k) + getattr(b, k) for k in ("bits_before", "bits_after", "changed_bits",
                                                                     "changed_values", "align_lost_bits")})


def _byte_dtype():
    import torch

    return torch.uint8


def _itemsize(dtype: str) -> int:
    sizes = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
             "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
    if dtype not in sizes:
        raise UserError(f"cannot write a tensor of dtype {dtype}")
    return sizes[dtype]


COPIED = (".json", ".txt", ".model", ".tiktoken", ".md")  # config, tokenizer and card files kept beside shards


def prune(ck: Checkpoint, steps, dest: Path, single: bool, allow_nonfinite: bool = False, progress=None) -> dict:
    """Write ``ck`` with ``steps`` applied to every conv/linear weight into ``dest`` (a file when ``single``,
    else a folder with the same shards, index and config.json), one tensor in memory at a time.
    Each tensor keeps its dtype; a method's result that the dtype cannot hold exactly is rounded to it and
    counted. Returns the sidecar (per-layer changed bits). The method and parameters go in every shard's
    metadata. ``dest`` is a temporary path the caller renames into place."""
    import numpy as np
    import torch

    from .methods import apply_tensor
    from .model import Layer, _check_finite

    spec = " then ".join(s.spec() for s in steps)
    meta = {"bitsieve.methods": spec, "bitsieve.parameters": json.dumps([{"method": s.name, **s.params} for s in steps],
                                                                        default=str)}
    todo = {e.key: e for e in ck.layers()}
    total, done, results = sum(e.size for e in todo.values()), 0, []

    def chunks(e: Entry, upto: int, sens: dict):
        """(rows, stored chunk, float32 weights after steps[:upto], their step counts, non-finite count)."""
        for start, stop in e.row_chunks():
            t = ck.read(e, start, stop)
            layer = Layer(e.name, e.kind, t.to(torch.float32).numpy(), role=e.role)
            _check_finite(layer, allow_nonfinite)
            w, st = layer.weight, []
            for k, step in enumerate(steps[:upto]):
                w, more = apply_tensor(w, [step], sensitive=sens[k][e.key][start:stop] if k in sens else None)
                st += more
            yield (start, stop), t, np.ascontiguousarray(w.reshape(layer.weight.shape)), st, layer.nonfinite

    sens = _global_channels(steps, todo, chunks)

    def tensor_of(e: Entry):
        """The tensor to write: pruned a chunk of rows at a time (methods are row-local), in its dtype."""
        nonlocal done
        if e.key not in todo:
            return ck.read(e)
        new, steps_stats, rounded, bad = None, None, 0, 0
        for (start, stop), t, w, st, nonfinite in chunks(e, len(steps), sens):
            chunk = torch.from_numpy(w).to(t.dtype)
            if new is None:
                new = torch.empty(e.weight_shape, dtype=t.dtype)
            new[start:stop] = chunk
            rounded += int((chunk.to(torch.float32).numpy() != w).sum())
            bad += nonfinite
            steps_stats = st if steps_stats is None else [_add(a, b) for a, b in zip(steps_stats, st)]
            done += t.numel()
            if progress:
                progress(done, total, e.name)
        results.append({"name": e.name, "shape": list(e.weight_shape), "role": e.role,
                        "dtype": FORMAT_OF.get(e.dtype, e.dtype), "changed_bits": sum(s.changed_bits for s in steps_stats),
                        "bits_before": steps_stats[0].bits_before, "bits_after": steps_stats[-1].bits_after,
                        "rounded": rounded, "nonfinite": bad, "steps": [s.as_dict() for s in steps_stats]})
        return new

    for f in ck.files:
        entries = [e for e in ck.entries if e.file == f]
        out = dest if single else dest / f.name
        write_shard(out, entries, tensor_of, {**ck.metadata.get(f, {}), **meta})
    if not single:
        for src in ck.root.iterdir():
            if src.is_file() and src.suffix in COPIED and src.stat().st_size < (64 << 20) and src not in ck.files:
                data = src.read_bytes()
                if src.name.endswith(INDEX_SUFFIX):
                    index = json.loads(data)
                    index.setdefault("metadata", {}).update(meta)
                    data = json.dumps(index, indent=2).encode()
                (dest / src.name).write_bytes(data)
    return {"layers": results, "methods": [s.spec() for s in steps],
            "parameters": [{"method": s.name, **s.params} for s in steps]}
