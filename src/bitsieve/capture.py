"""Real activations for user models: the inputs each conv/linear layer sees when the model runs on the user's
own data (``--inputs FILE``), so the designs that read activations (Stripes, Pragmatic, Laconic, ...) run on
user models as they do on the built-ins.

Three kinds of user model can run: a live ``nn.Module`` (``bitsieve.model.load(module, example_inputs=x)``);
a Hugging Face checkpoint folder whose ``config.json`` transformers can instantiate (built from local files
only, then run like a live module through the same forward hooks); an ONNX file, run by ONNX's reference
evaluator (pure NumPy, no onnxruntime), keeping the data operand of every Conv/Gemm/MatMul whose weight is a
layer. A state dict holds weights and no architecture: it cannot run.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import UserError, one_line

INPUT_SUFFIXES = (".npy", ".npz", ".txt")


def read_inputs(inputs):
    """``--inputs``: an array (.npy, or a NumPy/torch array passed in), named arrays (.npz, one per model input)
    or text (.txt, tokenised by a language model's own tokenizer)."""
    if not isinstance(inputs, (str, Path)):
        return inputs.detach().cpu().numpy() if hasattr(inputs, "detach") else np.asarray(inputs)
    path = Path(inputs)
    if path.suffix.lower() not in INPUT_SUFFIXES:
        raise UserError(f"--inputs {inputs}: expected a .npy or .npz array file or a .txt text file")
    if not path.is_file():
        raise UserError(f"--inputs {inputs}: no such file")
    if path.suffix.lower() == ".txt":
        return path.read_text(errors="replace")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError, OSError, zipfile errors ... on damaged files
        raise UserError(f"cannot read --inputs {inputs}: {one_line(str(exc)) or type(exc).__name__}") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            return {k: data[k] for k in data.files}
    return data


# ---- ONNX -------------------------------------------------------------------------------------------------------
def onnx_activations(path: Path, layers: list, inputs) -> None:
    """Run the ONNX graph at ``path`` on ``inputs`` and store, on each conv/linear layer of ``layers`` (as
    ``bitsieve.model`` read them from the same file), the data operand its node saw: activation, in_shape and
    out_shape, exactly as the torch hooks record them."""
    OnnxGraph(path, layers, inputs).capture()


class OnnxGraph:
    """An ONNX graph, fed from the user's inputs, run by the reference evaluator, with each conv/linear layer of
    ``layers`` matched to the node that reads its weight. A layer is found by its weight's values (not its
    name), so any naming rule works; only the first use of a shared weight counts, as with the torch hooks."""

    def __init__(self, path: Path, layers: list, inputs):
        import onnx

        self.path = path
        self.proto = onnx.load(str(path))
        graph = self.proto.graph
        self.feeds = _onnx_feeds(graph, read_inputs(inputs))
        consts = {t.name: t for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                consts.update({node.output[0]: a.t for a in node.attribute if a.name == "value"})
        by_key: dict = {}
        for layer in layers:
            if layer.kind in ("conv", "linear"):
                by_key.setdefault(_key(layer.weight), []).append(layer)
        self.uses = []  # (node, weight operand index, data operand index, layer, the stored tensor)
        done = set()
        for node in graph.node:
            if node.op_type not in ("Conv", "Gemm", "MatMul"):
                continue
            for wi, name in enumerate(node.input[:2]):
                if name not in consts:
                    continue
                w = _onnx_as_layer_weight(consts[name], node, wi)
                layer = next((cand for cand in by_key.get(_key(w), []) if id(cand) not in done
                              and np.array_equal(cand.weight, w)), None) if w is not None else None
                if layer is not None:
                    done.add(id(layer))
                    self.uses.append((node, wi, 1 - wi if node.op_type != "Conv" else 0, layer, consts[name]))
                break
        if not self.uses:
            raise UserError(f"{path}: no Conv, Gemm or MatMul node reads a conv/linear weight of the file")

    def run(self, intermediate: bool = False):
        from onnx.reference import ReferenceEvaluator

        try:
            return ReferenceEvaluator(self.proto).run(None, self.feeds, intermediate=intermediate)
        except Exception as exc:  # the reference evaluator raises whatever its operators raise
            raise UserError(f"cannot run {self.path} on --inputs: {type(exc).__name__}: {one_line(str(exc))}") \
                from None

    def capture(self) -> None:
        """Each matched layer's activation, in_shape and out_shape from one run."""
        values = self.run(intermediate=True)
        for node, wi, di, layer, _ in self.uses:
            x = np.asarray(values[node.input[di]], dtype=np.float32)
            y = np.asarray(values[node.output[0]], dtype=np.float32)
            if node.op_type == "Conv":
                if x.ndim == 3:  # Conv1d: a conv of height 1
                    x, y = x[:, :, None, :], y[:, :, None, :]
            elif wi == 0:  # y = W @ x: the tokens are x's columns
                x, y = np.swapaxes(x, -1, -2), np.swapaxes(y, -1, -2)
            elif node.op_type == "Gemm" and _attrs(node).get("transA", 0):
                x = x.T
            if x.ndim == 1:
                x, y = x[None], y[None]
            layer.activation = np.ascontiguousarray(x)
            layer.in_shape, layer.out_shape = tuple(x.shape[1:]), tuple(y.shape[1:])

    def outputs(self, weights: dict | None = None) -> list:
        """The graph's outputs with the matched layers' weights replaced by ``weights`` ({id(layer): array in
        the layer's layout}), stored back in each tensor's own layout and dtype; the file is not changed."""
        from onnx import TensorProto, numpy_helper

        saved = []
        try:
            for node, wi, _, layer, tensor in self.uses:
                if weights is None or id(layer) not in weights:
                    continue
                old = numpy_helper.to_array(tensor)
                w = np.asarray(weights[id(layer)], dtype=np.float32).reshape(layer.weight.shape)
                w = w.reshape(old.shape) if node.op_type == "Conv" else (w.T if _flip(node, wi) else w)
                copy = TensorProto()
                copy.CopyFrom(tensor)
                saved.append((tensor, copy))
                tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w).astype(old.dtype), tensor.name))
            return self.run()
        finally:
            for tensor, old in saved:
                tensor.CopyFrom(old)


def _key(w: np.ndarray) -> tuple:
    return tuple(w.shape), float(np.asarray(w, dtype=np.float64).sum())


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _onnx_as_layer_weight(tensor, node, index: int) -> np.ndarray | None:
    """The weight as a Layer holds it ([O, C, kh, kw] conv, [O, I] linear) when ``node`` reads ``tensor`` as
    its weight operand, else None."""
    from onnx import numpy_helper

    w = np.asarray(numpy_helper.to_array(tensor), dtype=np.float32)
    if node.op_type == "Conv":
        if index != 1 or w.ndim not in (3, 4):
            return None
        return w[:, :, None, :] if w.ndim == 3 else w
    if w.ndim != 2:
        return None
    return np.ascontiguousarray(w.T) if _flip(node, index) else w


def _flip(node, index: int) -> bool:
    """Whether a Gemm/MatMul operand at ``index`` holds a weight as [I, O] (y = A @ B reads B that way, unless
    Gemm's transB; as A a weight is already [O, I], unless transA)."""
    a = _attrs(node)
    if node.op_type == "Gemm":
        return not a.get("transB", 0) if index == 1 else bool(a.get("transA", 0))
    return index == 1


def _onnx_feeds(graph, data) -> dict:
    """The graph's inputs (initializers excluded) fed from one array or from named arrays, in their types."""
    from onnx import helper

    inits = {t.name for t in graph.initializer}
    wanted = [i for i in graph.input if i.name not in inits]
    if isinstance(data, str):
        raise UserError("an ONNX model takes arrays: give --inputs as .npy (one input) or .npz (named inputs)")
    if not isinstance(data, dict):
        if len(wanted) != 1:
            raise UserError(f"the ONNX model has {len(wanted)} inputs ({', '.join(i.name for i in wanted)}): "
                            "give --inputs as an .npz with one array per input name")
        data = {wanted[0].name: data}
    missing = [i.name for i in wanted if i.name not in data]
    if missing:
        raise UserError(f"--inputs has no array for the ONNX input {missing[0]!r} (it has {', '.join(data)})")
    feeds = {}
    for i in wanted:
        dtype = helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
        feeds[i.name] = np.asarray(data[i.name]).astype(dtype, copy=False)
    return feeds


# ---- Hugging Face ------------------------------------------------------------------------------------------------
def hf_module(ck):
    """The model of a checkpoint folder, built by transformers from its config.json and its own safetensors
    (local files only: nothing is downloaded), in float32 (bf16/fp16 weights widen exactly), in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if ck.config_path is None:
        raise UserError(f"{ck.root}: a checkpoint without config.json has no architecture to run on --inputs")
    try:
        config = transformers.AutoConfig.from_pretrained(str(ck.root), local_files_only=True)
    except Exception as exc:  # transformers raises ValueError/KeyError/OSError for unknown or bad configs
        raise UserError(f"transformers cannot build {ck.root}/config.json: {one_line(str(exc))}") from None
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    cls = cls if isinstance(cls, type) else transformers.AutoModel
    try:
        module = cls.from_pretrained(str(ck.root), config=config, local_files_only=True, dtype=torch.float32)
    except Exception as exc:  # missing or mismatched tensors, unsupported layouts ...
        raise UserError(f"transformers cannot load {ck.root} as {cls.__name__}: {one_line(str(exc))}") from None
    return module.eval()


def hf_inputs(ck, module, data) -> dict:
    """The keyword arguments of one forward pass: token ids [batch, tokens] from an integer array or from text
    tokenised by the folder's own tokenizer (cut to the model's context), a float array as the model's main
    input (``pixel_values`` of a vision model, ...), or an .npz's arrays by name."""
    import torch

    if isinstance(data, dict):
        kw = {k: torch.from_numpy(np.asarray(v).astype(np.int64 if np.issubdtype(np.asarray(v).dtype, np.integer)
                                                       else np.float32)) for k, v in data.items()}
        if "input_ids" in kw:
            kw["input_ids"] = _token_ids(module, data["input_ids"])
        return kw
    main = getattr(module, "main_input_name", "input_ids")
    if isinstance(data, np.ndarray) and np.issubdtype(data.dtype, np.floating) and main != "input_ids":
        return {main: torch.from_numpy(data.astype(np.float32))}
    if isinstance(data, str):
        try:
            import transformers

            tok = transformers.AutoTokenizer.from_pretrained(str(ck.root), local_files_only=True)
        except Exception:
            raise UserError(f"{ck.root} has no tokenizer to read text with: give token ids as --inputs ids.npy") \
                from None
        ids = np.asarray(tok(data)["input_ids"], dtype=np.int64)[None][:, :_context(module)]
        if ids.shape[1] == 0:
            raise UserError("--inputs: the text holds no tokens")
        return {"input_ids": torch.from_numpy(ids)}
    return {"input_ids": _token_ids(module, data)}


def _context(module) -> int | None:
    return next((getattr(module.config, k) for k in ("max_position_embeddings", "n_positions")
                 if isinstance(getattr(module.config, k, None), int)), None)


def _token_ids(module, data):
    """Checked token ids as an int64 tensor [batch, tokens]."""
    import torch

    ids = np.asarray(data)
    if not np.issubdtype(ids.dtype, np.integer) or ids.ndim not in (1, 2):
        raise UserError(f"--inputs for a language model: token ids as integers [tokens] or [batch, tokens], "
                        f"got {ids.dtype} {list(ids.shape)}")
    ids = ids.reshape(1, -1) if ids.ndim == 1 else ids
    vocab = getattr(module.config, "vocab_size", None)
    if ids.size == 0 or ids.min() < 0 or (vocab and ids.max() >= vocab):
        raise UserError(f"--inputs: token ids must lie in 0..{(vocab or 0) - 1} (the model's vocabulary)")
    limit = _context(module)
    if limit and ids.shape[1] > limit:
        raise UserError(f"--inputs: {ids.shape[1]} tokens exceed the model's context of {limit}")
    return torch.from_numpy(ids.astype(np.int64))
