import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

torch.set_num_threads(1)
settings.register_profile("ci", max_examples=60, deadline=None)
settings.load_profile("ci")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def shared():
    """The team's shared data folder (../shared from the repo root); skips clearly when it is missing."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder missing: {SHARED}")
    return SHARED
