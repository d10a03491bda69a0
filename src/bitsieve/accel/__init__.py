"""Accelerator performance, energy and area models, driven by the real bits of real models.

``ACCELERATORS`` maps a name to its model; each has ``name``, ``source``, ``confidence`` (one of
``base.CONFIDENCE``: 'exact (RTL)', 'reference code', 'reconstructed (patent/abstract)'), ``doc``, the
``formats`` it accepts, and a data file (``accel/data/<name>.toml``) with every parameter's default and a
citation per number. ``bitsieve.simulate`` runs a model's layers through them; the interface is
``base.Accelerator.simulate(layer, wplanes, aplanes, config) -> base.LayerResult``.

============  ============================================  ===============================
name          design                                        source / confidence
============  ============================================  ===============================
dense         DaDianNao-like bit-parallel baseline          DNNsim / reference code
stripes       Stripes (MICRO'16)                            DNNsim / reference code
pragmatic     Bit-Pragmatic (MICRO'17)                      DNNsim / reference code
laconic       Laconic (ISCA'19)                             DNNsim / reference code
tactical      Bit-Tactical (ASPLOS'19), E and P back-ends   DNNsim / reference code
bitlet        Bitlet (MICRO'21)                             published RTL / exact (RTL)
bitx          BitX (ICPP'21)                                abstract + patent / reconstructed
bitxpro       BitXpro (TVLSI'23)                            abstract / reconstructed
bitwave       BitWave (HPCA'24)                             BitSim / reference code
bitvert       BitVert, BBS (MICRO'24)                       paper + BitSim / reference code
pnpu          PNPU / Kim'20 (VLSI'20), value-level          abstracts / reconstructed
pragmatic-ws  weight-serial Pragmatic (BitSim)              BitSim / reference code
============  ============================================  ===============================
"""
from __future__ import annotations

from ..errors import UserError
from .base import CONFIDENCE, Accelerator, LayerResult, PackSpec, parse_sets
from .bitlet import Bitlet
from .bitvert import BitVert
from .bitwave import BitWave
from .bitx import BitX
from .bitxpro import BitXpro
from .dense import Dense
from .laconic import Laconic
from .pnpu import PNPU
from .pragmatic import Pragmatic
from .stripes import Stripes
from .tactical import Tactical
from .wspragmatic import WSPragmatic

ACCELERATORS: dict[str, Accelerator] = {a.name: a for a in (
    Dense(), Stripes(), Pragmatic(), Laconic(), Tactical(), Bitlet(), BitX(), BitXpro(), BitWave(), BitVert(),
    PNPU(), WSPragmatic())}

__all__ = ["ACCELERATORS", "CONFIDENCE", "Accelerator", "LayerResult", "PackSpec", "get", "names", "parse_sets"]


def get(name: str) -> Accelerator:
    """The accelerator called ``name`` (UserError listing the known ones otherwise)."""
    try:
        return ACCELERATORS[name.strip().lower()]
    except KeyError:
        raise UserError(f"unknown accelerator {name!r} (known: {', '.join(ACCELERATORS)})") from None


def names(text: str) -> list[str]:
    """'dense,bitx' or 'all' -> validated names in order, without duplicates."""
    if text.strip().lower() == "all":
        return list(ACCELERATORS)
    out = []
    for n in text.split(","):
        if n.strip():
            a = get(n).name
            if a not in out:
                out.append(a)
    if not out:
        raise UserError("no accelerator given (--accel NAME[,NAME...] or all)")
    return out
