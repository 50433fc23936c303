import sys
from pathlib import Path

import torch

# Test helpers (reference_cases.py, stats.py) live beside the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

from hypothesis import settings  # noqa: E402

# Deterministic examples by default so CI runs are reproducible; `HYPOTHESIS_PROFILE=explore` draws new ones.
settings.register_profile("default", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None, max_examples=200)
settings.load_profile(__import__("os").environ.get("HYPOTHESIS_PROFILE", "default"))
