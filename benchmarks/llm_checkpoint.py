"""Streaming a Llama-7B-shaped bf16 checkpoint: peak memory and time of `bitsieve profile` (and `prune`).

Writes a synthetic Hugging Face folder (config.json, shards of about 2 GB, model.safetensors.index.json) tensor
by tensor with random N(0, 0.02) bf16 weights, runs the commands in a child process, reports the child's peak
RSS and wall time, and deletes the folder. Llama-2-7B shapes: hidden 4096, MLP 11008, 32 layers, vocab 32000
(6.74B parameters, 13.5 GB). ``--layers N`` scales the depth down where disk or time is short; the largest
tensors (embedding, LM head, MLP) keep their full size, so the per-tensor peak is the same.

    python benchmarks/llm_checkpoint.py [--layers 32] [--dir /tmp] [--prune]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bitsieve.checkpoint import Entry, write_shard

HIDDEN, INTER, VOCAB = 4096, 11008, 32000
SHARD_BYTES = 2 << 30


def llama_entries(layers: int) -> list[tuple[str, tuple]]:
    out = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (HIDDEN,))]
        out += [(p + f"self_attn.{n}_proj.weight", (HIDDEN, HIDDEN)) for n in "qkvo"]
        out += [(p + "post_attention_layernorm.weight", (HIDDEN,)), (p + "mlp.gate_proj.weight", (INTER, HIDDEN)),
                (p + "mlp.up_proj.weight", (INTER, HIDDEN)), (p + "mlp.down_proj.weight", (HIDDEN, INTER))]
    return out + [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def write_checkpoint(folder: Path, layers: int) -> int:
    """The folder, one tensor in memory at a time; returns its size in bytes."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN,
        "intermediate_size": INTER, "num_hidden_layers": layers, "num_attention_heads": 32, "vocab_size": VOCAB,
        "torch_dtype": "bfloat16"}))
    shards, cur, size = [], [], 0
    for key, shape in llama_entries(layers):
        n = 2 * torch.Size(shape).numel()
        if cur and size + n > SHARD_BYTES:
            shards.append(cur)
            cur, size = [], 0
        cur.append((key, shape))
        size += n
    shards.append(cur)
    g = torch.Generator().manual_seed(0)

    def tensor_of(e: Entry):
        if len(e.shape) == 1:
            return torch.ones(e.shape, dtype=torch.bfloat16)
        return (torch.randn(e.shape, generator=g) * 0.02).to(torch.bfloat16)

    wmap, total = {}, 0
    for i, part in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        entries = [Entry(k, folder / name, "BF16", s, "other", "other") for k, s in part]
        write_shard(folder / name, entries, tensor_of, {"format": "pt"})
        wmap.update({k: name for k, _ in part})
        total += (folder / name).stat().st_size
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                    "weight_map": wmap}))
    return total


# The child reports its own VmHWM: getrusage's maxrss would include the pages a forked child inherits from
# this process (which held the generated tensors) before exec.
CHILD = ("import re, sys\nfrom bitsieve.cli import main\nrc = main(sys.argv[1:])\n"
         "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1), file=sys.stderr)\n"
         "sys.exit(rc)")


def measure(args: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS GB, stdout) of one `bitsieve` command in a fresh child process."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"bitsieve {' '.join(args)} failed: {r.stderr}")
    return wall, int(r.stderr.split()[-1]) / 2**20, r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--prune", action="store_true", help="also prune (bitx) into a second folder")
    ap.add_argument("--simulate", default="", help="also simulate, streamed, on these designs (e.g. bitx,bitvert)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(dir=a.dir, prefix="bitsieve-llm-"))
    try:
        t = time.perf_counter()
        size = write_checkpoint(work / "llama", a.layers)
        print(f"wrote {size / 1e9:.2f} GB ({a.layers} layers) in {time.perf_counter() - t:.0f} s", flush=True)
        wall, rss, out = measure(["profile", str(work / "llama"), "--json"])
        p = json.loads(out)
        print(f"profile: {wall:.0f} s, peak RSS {rss:.2f} GB, {p['total']['values']:,} values, format "
              f"{p['format']}, zero bits {100 * p['total']['zero_bit_frac']:.1f} %", flush=True)
        if a.prune:
            wall, rss, _ = measure(["prune", str(work / "llama"), "--method", "bitx:keep=4", "-o",
                                    str(work / "pruned"), "--json"])
            print(f"prune: {wall:.0f} s, peak RSS {rss:.2f} GB", flush=True)
        if a.simulate:
            wall, rss, out = measure(["simulate", str(work / "llama"), "--accel", a.simulate, "--format", "bf16",
                                      "--tokens", "1", "--json"])
            print(f"simulate ({a.simulate}, tokens 1): {wall:.0f} s, peak RSS {rss:.2f} GB", flush=True)
            print(out[:2000], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
