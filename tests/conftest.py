import sys
from pathlib import Path

import torch

# Test helpers (reference_cases.py, stats.py) live beside the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
