"""The README's Python examples run as written (in order, sharing one namespace)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_examples_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python examples"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    assert "torch.Size([1000, 2, 1, 1])" in capsys.readouterr().out
    assert namespace["x_low_gm"].means.shape == (8, 4, 3, 16, 16)
    assert bool(namespace["loss"].isfinite())
