"""Commands registered on the bitsieve app (see cli.py)."""
from .cli import app, out  # noqa: F401
