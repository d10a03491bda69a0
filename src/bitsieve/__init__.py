"""bitsieve: how many bits of a model matter, and how fast it would run on a bit-serial accelerator.

The Python API, for a live ``torch.nn.Module`` in a notebook as much as for a checkpoint on disk::

    import bitsieve
    m = bitsieve.load(module, example_inputs=x)        # its conv/linear layers (+ the inputs they saw on x)
    p = bitsieve.pack(weight, "bf16", group=64)         # one tensor's packed bit planes
    t = bitsieve.profile(module_or_path)                # bit sparsity per layer; t.to_pandas(), t.to_json()
    bitsieve.prune_(module, "bitx:keep=4")              # rewrite the module's weights in place
    rows = bitsieve.simulate(module, accel=["bitx", "stripes"], example_inputs=x, format="int16")
    rows = bitsieve.simulate("my-llama/", accel=["pragmatic"], inputs="ids.npy")  # HF folder or .onnx, run
    t = bitsieve.evaluate(module, loader, metric="top1", methods=["bitx:keep=4", "bbs:k=2+bitx:keep=4"])
                                                        # accuracy per variant, paired with the original

Every ``methods`` list means variants (each one spec, or several composed in order with ``+``), as the
command line's repeated ``--method`` does; ``prune_`` writes one model, so it takes one composition.

Nothing heavy is imported until a function is used: the ``bitsieve`` command imports this package, and
``bitsieve models`` / ``--help`` must not load torch. ``bitsieve.profile``, ``bitsieve.simulate`` and
``bitsieve.evaluate`` are also the submodules of the same name (``from bitsieve.profile import counts`` keeps
working): calling the module calls its API function.
"""
from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"
__all__ = ["evaluate", "load", "pack", "profile", "prune_", "simulate", "__version__"]


def pack(x, format: str = "fp32", group: int = 64, align: str = "none", axis: int | None = None):
    """``bitsieve.planes.pack`` for NumPy arrays and torch tensors of any float dtype (bf16 has no NumPy type:
    it is widened to float32, which holds it exactly)."""
    from .planes import pack as pack_planes

    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
    return pack_planes(x, format, group, align, axis)


def prune_(module, methods: str, format: str | None = None, group: int | None = None) -> list[dict]:
    """Apply weight methods (``"bitx:keep=4"``, several composed in order with ``+``) to every Conv1d, Conv2d and
    Linear weight of a live ``nn.Module``, in place, and return the per-layer counts. Without ``format`` a
    method that reads a float format reads the module's own dtype (bf16 stays bf16). One model comes out, so a
    list of several variants is refused (compose with ``+``)."""
    from . import methods as methods_mod
    from . import model as model_mod
    from .evaluate import module_steps
    from .errors import UserError

    if not isinstance(methods, str):
        if len(methods) != 1:
            raise UserError("prune_ writes one model: compose methods with '+' (\"bbs:k=2+bitx:keep=4\"), "
                            "not as a list of variants")
        methods = methods[0]
    m = model_mod.load(module)
    steps = module_steps(m, methods, format, group)
    layers = [layer for layer in m.layers if layer.kind != "other"]
    results = methods_mod.apply_model(layers, steps)
    for layer, r in zip(layers, results):
        model_mod.set_weight(m, layer, r.weight)
    return [r.as_dict() for r in results]


def _simulate(model, accel, format: str = "int16", example_inputs=None, baseline: str | None = None,
              methods=(), inputs=None, tokens: int | None = None, input_shape: str | None = None) -> list[dict]:
    """Cycles, speed-ups, latency with memory time, energy and area of ``model`` (a module, path, built-in name
    or loaded Model) on the accelerators ``accel``, per layer and for the whole model (layer ``*``), as tidy
    rows. With a live module and ``example_inputs`` (or a Hugging Face folder / .onnx file and ``inputs``, an
    array or a .npy/.npz/.txt path) the activation-serial designs read the real inputs each layer saw.
    ``methods``: variants, each one spec or several composed with ``+``; the unmodified model is always there.
    ``tokens`` / ``input_shape`` ('1x3x224x224'): the GEMM and conv sizes a weights file lacks (``tokens=1``:
    decoding, where ``latency_cycles`` / ``speedup_memory`` show the weights' DRAM time); a checkpoint streams."""
    from . import model as model_mod
    from .simulate import Run, simulate_model

    if isinstance(model, model_mod.Model):
        m = model
    elif isinstance(model, str) and example_inputs is None:
        m = model if inputs is not None or model not in _builtin_names() else model_mod.load(model, activations=1)
    else:
        m = model_mod.load(model, example_inputs=example_inputs)
    run = Run(accels=[accel] if isinstance(accel, str) else list(accel), fmt=format, baseline=baseline,
              methods=[methods] if isinstance(methods, str) else list(methods))
    return simulate_model(m, run, inputs=inputs, tokens=tokens, input_shape=input_shape)["rows"]


def _builtin_names():
    from .zoo import BUILTINS

    return BUILTINS


_CALLS = {"profile": lambda: importlib.import_module(__name__ + ".profile").profile, "simulate": lambda: _simulate,
          "evaluate": lambda: importlib.import_module(__name__ + ".evaluate").evaluate_module}
_LAZY = {"load": ("model", "load")}


class _CallableModule(types.ModuleType):
    """A submodule that is also the API function of its name: calling it calls that function."""

    def __call__(self, *args, **kwargs):
        return _CALLS[self.__name__.rpartition(".")[2]]()(*args, **kwargs)


class _Package(types.ModuleType):
    """The package: imports API functions on first use, and makes the ``profile``/``simulate`` submodules
    callable whenever the import system attaches them (``import bitsieve.simulate`` anywhere)."""

    def __setattr__(self, name, value):
        if name in _CALLS and isinstance(value, types.ModuleType):
            value.__class__ = _CallableModule
        super().__setattr__(name, value)

    def __getattr__(self, name):
        if name in _CALLS:
            return importlib.import_module(f"{__name__}.{name}")  # attached (and made callable) by the import
        if name in _LAZY:
            mod, attr = _LAZY[name]
            return getattr(importlib.import_module(f"{__name__}.{mod}"), attr)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


sys.modules[__name__].__class__ = _Package
