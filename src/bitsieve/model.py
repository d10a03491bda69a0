"""The import layer: any model (built-in name, live ``nn.Module``, safetensors checkpoint file or folder, .pt/.pth
state dict, .onnx) becomes a list of Layers holding float32 weights in their original layout, plus, for models
that can run, the layer shapes (and optionally activations) seen on a real input. Commands that can stream a
large checkpoint (profile, prune) read it through ``bitsieve.checkpoint`` instead of materialising it here."""

from __future__ import annotations

import math
import pickle
import sys
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bitsieve import zoo
from bitsieve.errors import UserError, one_line
from bitsieve.zoo import Builtin

SUFFIXES = (".safetensors", ".pt", ".pth", ".onnx")
CAPTURED = (nn.Conv2d, nn.Conv1d, nn.Linear)


@dataclass
class Layer:
    """One weight tensor and what we know of the computation that consumes it.

    For a conv, `F.conv2d(activation, weight, stride=stride, padding=padding, groups=groups)`
    reproduces the layer's output: `activation` is the input before the conv's own `padding`,
    but after any padding done by a separate op (e.g. TensorFlow-style SAME padding, which can
    be asymmetric). Conv1d layers appear as convs of height 1.
    """

    name: str
    kind: str  # 'conv' | 'linear' | 'other'
    weight: np.ndarray  # float32; conv [O, I/groups, KH, KW], linear [O, I]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    in_shape: tuple | None = None  # per-sample input shape: (C, H, W) for conv, (..., I) for linear
    out_shape: tuple | None = None
    activation: np.ndarray | None = None  # captured inputs, float32, [N, *in_shape]
    nonfinite: int = 0  # NaN/Inf weights zeroed (only with allow_nonfinite)
    role: str = ""  # what the tensor does (bitsieve.checkpoint.role_of): attention, mlp, embedding, norm ...
    dtype: str = "fp32"  # the format it was stored in (fp32, fp16, bf16): the default format to profile it in
    transposed: bool = False  # the module stores the weight [in, out] (GPT-2's Conv1D): `weight` is its .T view

    @property
    def macs(self) -> int | None:
        """Multiply-accumulates per sample, from the output shape; None when unknown."""
        if self.out_shape is None or self.kind == "other":
            return None
        if self.kind == "conv":
            return math.prod(self.out_shape[1:]) * self.weight.size
        return math.prod(self.out_shape[:-1]) * self.weight.size


@dataclass
class Model:
    """Layers of one model; `module` is set for models that can run (built-ins, live modules), `builtin` for
    built-ins. `notes` say what was assumed (layer kinds from config.json, GEMM shapes of a weights file)."""

    name: str
    layers: list[Layer]
    module: nn.Module | None = None
    builtin: Builtin | None = None
    notes: list[str] = field(default_factory=list)

    def dtype(self) -> str:
        """The storage format of most matmul weight values: the honest default to profile them in."""
        by: dict[str, int] = {}
        for layer in self.layers:
            if layer.kind != "other":
                by[layer.dtype] = by.get(layer.dtype, 0) + layer.weight.size
        return max(by, key=by.get) if by else "fp32"


def load(spec, *, activations: int = 0, allow_nonfinite: bool = False, include_other: bool = False,
         tokens: int | None = None, example_inputs=None, inputs=None, input_shape: str | None = None) -> Model:
    """Load a built-in by name, a weights file or checkpoint folder by path, or a live ``torch.nn.Module``.

    Built-ins always run once on a real sample to record layer shapes; with `activations=n` they
    keep the inputs of n samples. A live module runs on `example_inputs` (a tensor or a tuple of positional
    arguments) when given, recording shapes and keeping those inputs as activations. Layer weights of
    built-ins and modules are views of the parameters (no second copy): editing them in place changes what
    the module computes. `tokens` gives a weights file's linear layers the GEMM shape [tokens, in] -> [tokens,
    out] (a file has no input shapes; without it a simulator costs each linear layer as one token);
    `input_shape` ('1x3x224x224') gives its convs that input size (``_assume_shapes`` says what is assumed).
    ``inputs`` (a .npy/.npz/.txt path or an array) runs a user model that has an architecture (a Hugging Face
    folder with config.json, an .onnx file) on the user's data and keeps each layer's inputs (``bitsieve.capture``).
    """
    if activations < 0:
        raise UserError(f"--activations must be >= 0, got {activations}")
    if tokens is not None and tokens < 1:
        raise UserError(f"--tokens must be >= 1, got {tokens}")
    if inputs is not None and not isinstance(spec, nn.Module):
        return _load_running(spec, inputs, allow_nonfinite, include_other)
    if isinstance(spec, nn.Module):
        if example_inputs is None and inputs is not None:
            from .capture import read_inputs

            example_inputs = torch.as_tensor(read_inputs(inputs))
        model = _load_module(spec, include_other)
        for layer in model.layers:
            _check_finite(layer, allow_nonfinite)
        if example_inputs is not None:
            _run_module(model, example_inputs, keep=True)
        return model
    if example_inputs is not None:
        raise UserError("example_inputs need a live torch.nn.Module to run")
    spec = str(spec)
    if spec in zoo.BUILTINS:
        model = _load_builtin(zoo.BUILTINS[spec], include_other)
    else:
        path = Path(spec)
        if not path.exists():
            if path.suffix.lower() in SUFFIXES or path.name.endswith(".json") or len(path.parts) > 1:
                raise UserError(f"cannot read {spec}: no such file")
            zoo.get(spec)  # raises the unknown-model error listing the built-ins
        from .checkpoint import is_checkpoint

        model = _load_checkpoint(path, include_other) if is_checkpoint(path) else \
            Model(path.stem, _load_file(path, include_other))
        _assume_shapes(model, tokens, input_shape, keep_geometry=path.suffix.lower() == ".onnx")
    for layer in model.layers:
        _check_finite(layer, allow_nonfinite)
    if model.module is not None:
        _trace(model, max(activations, 1), keep=activations > 0)
    elif activations > 0:
        raise UserError(f"cannot capture activations of {spec}: a weights file has no architecture to run")
    return model


def _load_running(spec, inputs, allow_nonfinite: bool, include_other: bool) -> Model:
    """A user model run on the user's ``inputs``: a Hugging Face folder through transformers and the same hooks
    as a live module, an ONNX file through ONNX's reference evaluator (``bitsieve.capture``)."""
    from . import capture
    from .checkpoint import FORMAT_OF, Checkpoint, is_checkpoint, role_of

    spec = str(spec)
    if spec in zoo.BUILTINS:
        raise UserError(f"{spec} runs on its own data: use --activations N instead of --inputs")
    path = Path(spec)
    if not path.exists():
        raise UserError(f"cannot read {spec}: no such file")
    if path.suffix.lower() == ".onnx":
        model = Model(path.stem, _load_file(path, include_other))
        capture.onnx_activations(path, model.layers, inputs)
        model.notes.append(f"activations captured by running {path.name} on --inputs (ONNX reference evaluator)")
    elif is_checkpoint(path) and (path if path.is_dir() else path.parent).joinpath("config.json").is_file():
        ck = Checkpoint(path)
        module = capture.hf_module(ck)
        kw = capture.hf_inputs(ck, module, capture.read_inputs(inputs))
        model = _load_module(module, include_other)
        model.name = ck.name
        stored = {e.name: FORMAT_OF.get(e.dtype, "fp32") for e in ck.entries}
        for layer in model.layers:
            layer.dtype = stored.get(layer.name, ck.dtype())
            layer.role = role_of(layer.name + ".weight", layer.weight.shape, ck.config)[1]
        _forward(model, lambda: module(**kw), keep=True)
        shown = ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in kw.items())
        model.notes.append(f"{type(module).__name__} built by transformers from config.json, run in float32 on "
                           f"--inputs ({shown})")
    else:
        raise UserError(f"{spec} holds weights but no architecture, so it cannot run on --inputs (export the model "
                        "to ONNX, save it as a Hugging Face folder with config.json, or pass the live module to "
                        "bitsieve.simulate)")
    for layer in model.layers:
        _check_finite(layer, allow_nonfinite)
    return model


def _assume_shapes(model: Model, tokens: int | None, input_shape: str | None, keep_geometry: bool) -> None:
    """A weights file has no input shapes: give linear layers `tokens` tokens and convs without a known input
    size the `input_shape` H x W ('same' padding, where the file stores no padding), and say what was assumed."""
    hw = None if input_shape is None else _spatial(input_shape)
    for layer in model.layers:
        assume_shape(layer, tokens, hw, keep_geometry)
    model.notes += shape_notes(tokens, hw, keep_geometry, {layer.kind for layer in model.layers
                                                            if layer.in_shape is None})


def assume_shape(layer: Layer, tokens: int | None, hw: tuple | None, keep_geometry: bool) -> None:
    """One layer of a weights file: a linear layer as a GEMM of `tokens` tokens, a conv of unknown input size
    on an `hw` input (stride 1 and 'same' padding unless the file stores its geometry)."""
    if tokens is not None and layer.kind == "linear":
        layer.in_shape, layer.out_shape = (tokens, layer.weight.shape[1]), (tokens, layer.weight.shape[0])
    if hw is not None and layer.kind == "conv" and layer.in_shape is None:
        (h, w), (kh, kw) = hw, layer.weight.shape[2:]
        if not keep_geometry:
            layer.padding = ((kh - 1) // 2, (kw - 1) // 2)
        (sh, sw), (ph, pw) = layer.stride, layer.padding
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if oh < 1 or ow < 1:
            raise UserError(f"--input-shape: layer {layer.name}'s kernel {kh}x{kw} does not fit a {h}x{w} input")
        layer.in_shape = (layer.weight.shape[1] * layer.groups, h, w)
        layer.out_shape = (layer.weight.shape[0], oh, ow)


def shape_notes(tokens: int | None, hw: tuple | None, keep_geometry: bool, unknown: set) -> list[str]:
    """What `assume_shape` assumed, and which layer kinds (`unknown`) are still costed without an input size."""
    said = ([f"linear layers are GEMMs of {tokens} tokens (--tokens)"] if tokens is not None else []) + (
        [f"every conv sees a {hw[0]}x{hw[1]} input (--input-shape)" + (
            "" if keep_geometry else " with stride 1 and 'same' padding (a state dict stores neither)")]
        if hw is not None else [])
    rest = (["each linear layer is costed as one token (give --tokens N)"] if "linear" in unknown else []) + \
        (["each conv as one output pixel (give --input-shape NxCxHxW)"] if "conv" in unknown else [])
    return (["; ".join(said)] if said else []) + (
        ["a weights file has no input shapes: " + ", ".join(rest)] if rest else [])


def stream_checkpoint(path, tokens: int | None = None, input_shape: str | None = None,
                      allow_nonfinite: bool = False) -> tuple[Model, int, object]:
    """A safetensors checkpoint's conv/linear layers one at a time, each read, widened to float32 and shaped as
    ``load`` would (so a model larger than memory can be simulated layer by layer): the Model shell (name and
    notes, no layers), the number of layers and a generator of Layers. The notes are complete once the
    generator is exhausted."""
    from .checkpoint import Checkpoint

    ck = Checkpoint(path)
    entries = ck.layers()
    hw = None if input_shape is None else _spatial(input_shape)
    shell = Model(ck.name, [], notes=[ck.describe()])

    def layers():
        unknown = set()
        for e in entries:
            t = ck.read(e)
            layer = Layer(e.name, e.kind, t.to(torch.float32).numpy(), role=e.role, dtype=_FORMATS.get(t.dtype, "fp32"))
            del t
            _check_finite(layer, allow_nonfinite)
            assume_shape(layer, tokens, hw, False)
            if layer.in_shape is None:
                unknown.add(layer.kind)
            yield layer
        shell.notes += shape_notes(tokens, hw, False, unknown)

    return shell, len(entries), layers()


def _spatial(text: str) -> tuple[int, int]:
    """H, W of an input shape written NxCxHxW, CxHxW or HxW."""
    try:
        dims = [int(d) for d in str(text).lower().replace("*", "x").split("x")]
    except ValueError:
        dims = []
    if not 2 <= len(dims) <= 4 or min(dims) < 1:
        raise UserError(f"--input-shape must be NxCxHxW (e.g. 1x3x224x224), got {text!r}")
    return dims[-2], dims[-1]


def _load_checkpoint(path: Path, include_other: bool) -> Model:
    """A safetensors file, folder or index, every tensor widened to float32 (for models that fit in memory)."""
    from .checkpoint import Checkpoint

    ck = Checkpoint(path)
    layers = []
    for e in ck.layers(include_other):
        t = ck.read(e)
        layers.append(Layer(e.name, e.kind, t.to(torch.float32).numpy(), role=e.role,
                            dtype=_FORMATS.get(t.dtype, "fp32")))
    return Model(ck.name, layers, notes=[ck.describe()])


def _captured(sub: nn.Module) -> bool:
    """A conv/linear module: torch's, or transformers' GPT-2 ``Conv1D`` (a linear layer storing [in, out])."""
    return (isinstance(sub, CAPTURED) or _is_hf_conv1d(sub)) and isinstance(getattr(sub, "weight", None), torch.Tensor)


def _is_hf_conv1d(sub: nn.Module) -> bool:
    return type(sub).__name__ == "Conv1D" and hasattr(sub, "nf")  # transformers.pytorch_utils, not imported


def _load_module(module: nn.Module, include_other: bool) -> Model:
    """A live module's conv/linear layers (weights are views of its parameters)."""
    layers, shared = [], set()
    for name, sub in module.named_modules():
        if _captured(sub):
            w = sub.weight.detach()
            dtype = _FORMATS.get(w.dtype, "fp32")
            weight = w.numpy() if w.dtype == torch.float32 and w.device.type == "cpu" else w.float().cpu().numpy()
            if _is_hf_conv1d(sub):
                layers.append(Layer(name, "linear", weight.T, role="linear", dtype=dtype, transposed=True))
            elif isinstance(sub, nn.Linear):
                layers.append(Layer(name, "linear", weight, role="linear", dtype=dtype))
            else:
                o, i, k = weight.shape[0], weight.shape[1], weight.shape[-1]
                layers.append(Layer(name, "conv", weight.reshape(o, i, -1, k), role="conv", dtype=dtype,
                                    **_conv_geometry(sub)))
            shared.add(name)
    if include_other:
        for key, tensor in module.state_dict().items():
            if tensor.is_floating_point() and _layer_name(key) not in shared:
                layers.append(Layer(_layer_name(key), "other", tensor.detach().float().cpu().numpy()))
    if not layers:
        raise UserError(f"{type(module).__name__} has no Conv1d, Conv2d or Linear layers")
    return Model(type(module).__name__, layers, module)


def set_weight(model: Model, layer: Layer, weight: np.ndarray) -> None:
    """Make ``weight`` (the layer's [O, ...] layout) what the layer computes: written into the module's
    parameter in its own dtype and layout (a float32 CPU parameter is shared with ``layer.weight``; any other is
    a copy, kept equal to the parameter's rounded values)."""
    w = np.asarray(weight, dtype=np.float32).reshape(layer.weight.shape)
    if model.module is None:
        layer.weight[...] = w
        return
    param = model.module.get_submodule(layer.name).weight
    if param.dtype == torch.float32 and param.device.type == "cpu" and \
            np.shares_memory(layer.weight, param.detach().numpy()):
        layer.weight[...] = w
        return
    t = torch.from_numpy(np.ascontiguousarray(w))
    with torch.no_grad():
        param.copy_((t.T if layer.transposed else t.reshape(param.shape)).to(param.dtype))
        back = param.detach().float().cpu()
    layer.weight[...] = (back.T if layer.transposed else back).reshape(layer.weight.shape).numpy()


def _run_module(model: Model, inputs, keep: bool) -> None:
    """One forward pass of a live module on the user's inputs, recording shapes (and inputs if asked)."""
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    _forward(model, lambda: model.module(*args), keep)


def capture_activations(model: Model, n: int = 1) -> None:
    """Run a built-in on n real samples and store each conv/linear layer's input (and shapes)."""
    if model.module is None or model.builtin is None:
        raise UserError(f"cannot capture activations of {model.name}: only built-in models can run")
    _trace(model, n, keep=True)


def _layer_name(key: str) -> str:
    """One naming rule for modules and files: a state-dict key without its '.weight' suffix."""
    return key.removesuffix(".weight")


def _conv_geometry(module: nn.Module) -> dict:
    """stride/padding/groups of a torch conv, with Conv1d seen as a conv of height 1."""
    kernel = module.kernel_size
    if isinstance(module.padding, str):  # 'valid' or 'same' (torch puts an odd extra pad on the right)
        padding = tuple(0 if module.padding == "valid" else d * (k - 1) // 2 for k, d in zip(kernel, module.dilation))
    else:
        padding = tuple(module.padding)
    if isinstance(module, nn.Conv1d):
        return {"stride": (1, module.stride[0]), "padding": (0, padding[0]), "groups": module.groups}
    return {"stride": tuple(module.stride), "padding": padding, "groups": module.groups}


def _load_builtin(builtin: Builtin, include_other: bool) -> Model:
    m = _load_module(builtin.load(), include_other)
    m.name, m.builtin = builtin.name, builtin
    return m


def _hook(layer: Layer, seen: list[str], keep: bool, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
    """Record the first call of a conv/linear: shapes, and the input if asked."""
    if layer.name in seen:
        return
    seen.append(layer.name)
    x = args[0]
    if isinstance(getattr(module, "static_padding", None), nn.ZeroPad2d):  # SAME padding done inside forward
        x = module.static_padding(x)
    if isinstance(module, nn.Conv1d):
        x, output = x.unsqueeze(-2), output.unsqueeze(-2)
    layer.in_shape, layer.out_shape = tuple(x.shape[1:]), tuple(output.shape[1:])
    if keep:  # a copy: later in-place ops (e.g. ReLU(inplace=True)) must not alter it
        layer.activation = x.detach().float().cpu().numpy().copy()


def _trace(model: Model, n: int, keep: bool) -> None:
    """One forward pass of a built-in on n real samples."""
    x = model.builtin.sample_input(n)
    _forward(model, lambda: model.module(x), keep)


def _forward(model: Model, call, keep: bool) -> None:
    """`call()` with hooks on the conv/linear layers; also puts them in forward order."""
    by_name = {layer.name: layer for layer in model.layers if layer.kind != "other"}
    seen: list[str] = []
    hooks = [
        sub.register_forward_hook(partial(_hook, by_name[name], seen, keep))
        for name, sub in model.module.named_modules()
        if name in by_name and _captured(sub)
    ]
    try:
        with torch.no_grad():
            call()
    finally:
        for hook in hooks:
            hook.remove()
    order = {name: i for i, name in enumerate(seen)}
    model.layers.sort(key=lambda layer: (layer.kind == "other", order.get(layer.name, len(order))))


def _check_finite(layer: Layer, allow: bool) -> None:
    """Refuse NaN/Inf weights (they poison every statistic) unless the user asks to zero them."""
    bad = ~np.isfinite(layer.weight)
    count = int(bad.sum())
    if not count:
        return
    if not allow:
        raise UserError(
            f"layer {layer.name} has {count} non-finite weights (use --allow-nonfinite to zero and count them)"
        )
    layer.weight[bad] = 0.0
    layer.nonfinite = count


def _load_file(path: Path, include_other: bool) -> list[Layer]:
    """A .pt/.pth state dict or an .onnx file (safetensors go through bitsieve.checkpoint)."""
    if not path.is_file():  # a FIFO or a device would block or never end
        raise UserError(f"cannot read {path}: not a regular file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"unknown model file type '{path.suffix}' for {path} (expected one of {', '.join(SUFFIXES)}, "
                        "a checkpoint folder or its .safetensors.index.json)")
    empty: list[str] = []
    if suffix == ".onnx":
        layers = _onnx_layers(path, empty)
    else:
        tensors = _torch_file(path)
        layers = [_tensor_layer(key, t) for key, t in tensors if _keep_tensor(path, key, t, empty)]
    layers = [layer for layer in layers if include_other or layer.kind != "other"]
    skipped = f"; {len(empty)} zero-size tensors skipped" if empty else ""
    if not layers:
        raise UserError(f"no weight tensors in {path}" + ("" if include_other else " (no conv or linear weights)")
                        + skipped)
    if empty:
        print(f"bitsieve: note: {one_line(path)}: skipped {len(empty)} zero-size tensors "
              f"({one_line(', '.join(empty[:3]))}{', ...' if len(empty) > 3 else ''})", file=sys.stderr)
    return layers


def _keep_tensor(path: Path, key: str, t: torch.Tensor, empty: list[str]) -> bool:
    """Whether a file's tensor becomes a layer. Layouts and dtypes we cannot read as real numbers are refused
    rather than dropped (the user would not see them missing); a view larger than its storage (stride 0) is
    refused before anything is materialised; zero-size tensors are noted in ``empty`` and skipped."""
    if t.layout != torch.strided:
        raise UserError(f"cannot read {path}: tensor {key} is {str(t.layout).removeprefix('torch.')} "
                        "(only dense tensors are supported)")
    if t.is_meta:
        raise UserError(f"cannot read {path}: tensor {key} is a meta tensor (it holds no data)")
    if t.is_quantized or t.is_complex():
        kind = "quantised" if t.is_quantized else "complex"
        raise UserError(f"cannot read {path}: tensor {key} is {kind} ({str(t.dtype).removeprefix('torch.')}); "
                        "give real float weights")
    if not t.is_floating_point():
        return False
    if t.numel() == 0:
        empty.append(key)
        return False
    if t.numel() * t.element_size() > t.untyped_storage().nbytes():
        raise UserError(f"cannot read {path}: tensor {key} claims {t.numel():,} values but its storage holds "
                        f"{t.untyped_storage().nbytes() // t.element_size():,} (a stride-0 or overlapping view)")
    return True


_FORMATS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _tensor_layer(key: str, tensor: torch.Tensor) -> Layer:
    """Kind and role from the name and rank (bitsieve.checkpoint.role_of: embeddings and norms are not matmuls,
    3-D weights are Conv1d kernels read as convs of height 1); fp16/bf16 widen to float32 exactly (fp64 rounds)."""
    from .checkpoint import role_of

    weight = tensor.detach().to(torch.float32).numpy()
    kind, role, transposed = role_of(key, tuple(weight.shape), {})
    if kind == "conv" and weight.ndim == 3:
        weight = weight[:, :, None, :]
    return Layer(_layer_name(key), kind, weight, role=role, dtype=_FORMATS.get(tensor.dtype, "fp32"))


def _torch_file(path: Path) -> list[tuple[str, torch.Tensor]]:
    """Tensors of a state dict saved with torch.save, never running pickled code."""
    _check_archive(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower():
            raise UserError(f"refusing to unpickle code from {path} (it is not a plain state dict)") from exc
        raise UserError(f"cannot read {path}: corrupted or not a PyTorch file") from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, IndexError ... on damaged files
        raise UserError(f"cannot read {path}: corrupted or truncated PyTorch file ({type(exc).__name__})") from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise UserError(f"cannot read {path}: it holds a {type(obj).__name__}, not a state dict")
    return list(_flatten(obj, ""))


def _check_archive(path: Path) -> None:
    """Bound what torch.load may allocate by the file's own size: torch.save stores its zip entries
    uncompressed, so entries that inflate past the file (a zip bomb, overlapping entries) are refused; the
    legacy format declares storage sizes it is never checked against, so it is refused too."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except Exception as exc:  # zipfile raises BadZipFile, NotImplementedError, ValueError... on damage
        with path.open("rb") as f:
            head = f.read(1)
        if head == b"\x80":  # a bare pickle: torch's pre-1.6 format
            raise UserError(f"cannot read {path}: PyTorch's legacy (pre-1.6) format is not supported; "
                            "re-save it with torch.save") from None
        raise UserError(f"cannot read {path}: corrupted or not a PyTorch file ({type(exc).__name__})") from None
    total = sum(i.file_size for i in infos)
    if any(i.compress_type != zipfile.ZIP_STORED for i in infos) or total > size:
        raise UserError(f"cannot read {path}: its entries inflate to {total:,} bytes from a {size:,}-byte file "
                        "(torch.save never compresses: refusing a possible zip bomb)")


def _flatten(obj: Mapping, prefix: str):
    """Tensors of a possibly nested state dict, with dotted names."""
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            yield prefix + str(key), value
        elif isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")


def _onnx_layers(path: Path, empty: list[str]) -> list[Layer]:
    """Initializers and Constant-node tensors; the consuming node decides the kind, names the layer
    (``_onnx_name``) and, through ONNX shape inference, gives its input and output shapes. Layers come out
    in the order the graph first uses them."""
    import onnx
    from onnx import TensorProto, numpy_helper

    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, missing external data ...
        raise UserError(f"cannot read {path}: corrupted or not an ONNX model ({type(exc).__name__})") from exc
    graph = proto.graph
    tensors = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            tensors.update({node.output[0]: a.t for a in node.attribute if a.name == "value"})
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    consumers: dict[str, list[tuple[int, onnx.NodeProto, int]]] = {}
    for position, node in enumerate(graph.node):
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((position, node, index))
    shapes = _onnx_shapes(proto)
    layers, taken = [], set()
    for name, tensor in tensors.items():
        if tensor.data_type not in floats:
            continue
        dims = list(tensor.dims)
        if any(d < 0 for d in dims):  # numpy would read -1 as "the rest" and accept the tensor
            raise UserError(f"cannot read {path}: tensor {name} has negative dimensions {dims}")
        if math.prod(dims) == 0:
            empty.append(name)
            continue
        try:
            weight = np.array(numpy_helper.to_array(tensor), dtype=np.float32)
        except Exception as exc:
            raise UserError(f"cannot read {path}: tensor {name} is damaged ({exc})") from exc
        uses = consumers.get(name, [])
        found = next(((lay, node, index) for _, node, index in uses
                      if (lay := _onnx_weight(name, weight, node, index)) is not None), None)
        if found is None:
            layer = Layer(_layer_name(name), "other", weight)
        else:
            layer, node, index = found
            layer.name = _onnx_name(name, node, taken)
            layer.in_shape, layer.out_shape = _onnx_io_shapes(node, index, shapes)
        taken.add(layer.name)
        layers.append((uses[0][0] if uses else len(graph.node), layer))
    return [layer for _, layer in sorted(layers, key=lambda item: item[0])]


_ONNX_MADE_UP = r"^(val_\d+|onnx::.*|const_fold_opt__\d+|\d*)$"  # tensor names exporters invent


def _onnx_name(tensor: str, node, taken: set) -> str:
    """A weight's layer name. The initializer's own name when it names a parameter ('conv1.weight' -> 'conv1');
    when the exporter made it up ('val_37' from the dynamo exporter, 'onnx::MatMul_12' from constant folding),
    the torch module that consumes it, as a live module's layer would be named: from the dynamo exporter's
    metadata (pkg.torch.onnx.name_scopes ['', 'blocks.0', 'blocks.0.fc1', 'linear'] -> 'blocks.0.fc1') or the
    TorchScript exporter's node name ('/blocks/blocks.0/fc1/MatMul' -> 'blocks.0.fc1'); else the node's name.
    A name already taken gets the node's name appended."""
    import ast
    import re

    name = _layer_name(tensor)
    if re.match(_ONNX_MADE_UP, tensor):
        meta = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = [str(x) for x in ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))]
        except (ValueError, SyntaxError, TypeError):
            scopes = []
        path = ""
        if node.name.startswith("/"):  # TorchScript: '/' + each module's name (a child's own, 'fc1', or
            for scope in node.name.strip("/").split("/")[:-1]:  # 'blocks.0' for a numbered one) + '/' + op
                path = f"{path}.{scope.rsplit('.', 1)[-1]}" if path else scope
        name = (scopes[-2] if len(scopes) >= 2 and scopes[-2] else path or node.name.strip("/")) or name
    if name in taken and node.name:
        name = f"{name}/{node.name.strip('/')}"
    return name


def _onnx_shapes(proto) -> dict[str, tuple]:
    """Value name -> its dims (None where symbolic) from ONNX shape inference with data propagation (so
    Shape -> Concat -> Reshape chains resolve); {} when inference fails (an exotic or over-2-GB graph), leaving
    shapes to --input-shape/--tokens. A symbolic batch (first input dimension) is taken as 1: the layers
    record per-sample shapes, and a known batch lets reshapes to -1 resolve. Changes ``proto``'s inputs."""
    import onnx

    stored = {t.name for t in proto.graph.initializer}
    for v in proto.graph.input:
        dims = v.type.tensor_type.shape.dim
        if v.name not in stored and len(dims) and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    try:
        graph = onnx.shape_inference.infer_shapes(proto, data_prop=True).graph
    except Exception:  # onnx raises InferenceError, ValueError, protobuf errors ...
        return {}
    out = {}
    for v in [*graph.input, *graph.value_info, *graph.output]:
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                                for d in t.shape.dim)
    return out


def _onnx_io_shapes(node, index: int, shapes: dict) -> tuple[tuple | None, tuple | None]:
    """Per-sample (in_shape, out_shape) of the layer whose weight is operand ``index`` of ``node``, in the
    layout the torch hooks and bitsieve.capture record: conv (C, H, W) -> (O, OH, OW) (Conv1d with height 1);
    linear (..., I) -> (..., O) with the tokens in rows. (None, None) where a dimension is unknown."""
    x = shapes.get(node.input[0 if node.op_type == "Conv" else 1 - index])
    y = shapes.get(node.output[0])
    if x is None or y is None or len(x) != len(y) or not x:
        return None, None
    if node.op_type == "Conv":
        if len(x) == 3:
            x, y = (x[0], x[1], 1, x[2]), (y[0], y[1], 1, y[2])
    else:
        attrs = {a.name: a.i for a in node.attribute if a.name in ("transA", "transB")}
        if index == 0:  # y = W @ x: tokens are x's columns (unless Gemm reads x transposed)
            y = y[:-2] + y[:-3:-1] if len(y) >= 2 else y
            if not attrs.get("transB"):
                x = x[:-2] + x[:-3:-1] if len(x) >= 2 else x
        elif attrs.get("transA"):
            x = x[::-1]
        if len(x) == 1:
            x, y = (1,) + x, (1,) + y
    if any(d is None for d in x[1:] + y[1:]):
        return None, None
    return x[1:], y[1:]


def _onnx_weight(name: str, weight: np.ndarray, node, index: int) -> Layer | None:
    """A conv/linear Layer when `node` uses `weight` as its weight operand, else None."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv" and index == 1 and weight.ndim in (3, 4):
        rank = weight.ndim - 2
        strides = list(attrs.get("strides", [1] * rank))
        pads = list(attrs.get("pads", [0] * 2 * rank))[:rank]  # begin pads; exporters write symmetric ones
        if attrs.get("auto_pad", b"NOTSET") in (b"SAME_UPPER", b"SAME_LOWER"):
            pads = [(k - 1) // 2 for k in weight.shape[2:]]
        if rank == 1:
            weight, strides, pads = weight[:, :, None, :], [1] + strides, [0] + pads
        return Layer(_layer_name(name), "conv", weight, tuple(strides), tuple(pads), int(attrs.get("group", 1)))
    if weight.ndim != 2 or index > 1 or node.op_type not in ("Gemm", "MatMul"):
        return None
    # y = A @ B: as B a weight is [I, O] (unless Gemm's transB), as A it is already [O, I]
    if node.op_type == "Gemm":
        flip = not attrs.get("transB", 0) if index == 1 else bool(attrs.get("transA", 0))
    else:
        flip = index == 1
    return Layer(_layer_name(name), "linear", np.ascontiguousarray(weight.T) if flip else weight)
