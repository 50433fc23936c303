"""Load the official GMFlow pure-PyTorch ops from a user's checkout, to time them beside ours.

Nothing of the official code is shipped with gmfm: pass ``--official-dir`` pointing at a checkout of
github.com/Lakonik/GMFlow (MIT). ``lib/ops/gmflow_ops/gmflow_ops.py`` imports only torch and is loaded
as is; the few functions living in files that import mmcv/mmgen (probabilistic guidance, the conversion
kernel, ``GMFlowMixin``, the NLL loss) are compiled from their own source with ``ast``, decorators other
than ``torch.jit.script`` removed.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import types
from pathlib import Path
from typing import Optional

import torch


def _load_module(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _extract(path: Path, names: set[str], namespace: dict) -> dict:
    tree = ast.parse(path.read_text())
    nodes = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names:
            node.decorator_list = [d for d in node.decorator_list if "jit" in ast.unparse(d)]
            nodes.append(node)
    missing = names - {n.name for n in nodes}
    if missing:
        raise RuntimeError(f"{path}: could not find {sorted(missing)}")
    module = ast.Module(body=nodes, type_ignores=[])
    # TorchScript reads the source of scripted functions: give it a real file to read.
    source_file = Path(namespace.setdefault("__tmpdir__", "/tmp")) / f"gmfm_official_{path.stem}.py"
    source_file.write_text(ast.unparse(module))
    exec(compile(source_file.read_text(), str(source_file), "exec"), namespace)  # noqa: S102
    return namespace


def load_official(root: str | Path) -> types.SimpleNamespace:
    root = Path(root)
    ops_path = root / "lib" / "ops" / "gmflow_ops" / "gmflow_ops.py"
    if not ops_path.exists():
        raise FileNotFoundError(f"{ops_path} not found: --official-dir must be a checkout of Lakonik/GMFlow")
    ops = _load_module(ops_path, "official_gmflow_ops")
    namespace = {"__name__": "gmfm_official_extract", "torch": torch, "math": math, "Optional": Optional}
    namespace.update({k: getattr(ops, k) for k in dir(ops) if not k.startswith("_")})
    _extract(root / "lib" / "models" / "diffusions" / "gmflow.py",
             {"probabilistic_guidance_jit", "denoising_gm_convert_to_mean_jit", "GMFlowMixin"}, namespace)
    _extract(root / "lib" / "models" / "losses" / "diffusion_loss.py", {"gaussian_mixture_nll_loss"}, namespace)

    mixin = namespace["GMFlowMixin"]()
    mixin.num_timesteps = 1000
    return types.SimpleNamespace(ops=ops, mixin=mixin, **{k: namespace[k] for k in (
        "probabilistic_guidance_jit", "denoising_gm_convert_to_mean_jit", "gaussian_mixture_nll_loss")})
