"""`python -m bitsieve`: the same entry point as the `bitsieve` command."""
import sys

from .cli import main

sys.exit(main())
