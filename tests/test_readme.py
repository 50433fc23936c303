"""The README's Python examples run as written (in order, sharing one namespace).

The official-checkpoint example runs on a tiny pipeline folder in the official layout from the reference
root (``pipelines/*/model``): the test substitutes its path for the checkpoint folder name.
"""

import json
import re
from pathlib import Path

import torch
from reference_cases import reference_root

README = Path(__file__).resolve().parent.parent / "README.md"
CHECKPOINT = '"gmflow_imagenet_k8_ema"'


def tiny_checkpoint(words: list[str]) -> tuple[Path, list[str]]:
    """A reference pipeline folder (tiny_public first) and the label words the example will use: the README's
    when the folder knows them, else the first word of as many of the folder's own labels."""
    folders = sorted((reference_root() / "pipelines").glob("*/model"), key=lambda p: p.parent.name != "tiny_public")
    assert folders, f"no reference pipeline folder under {reference_root() / 'pipelines'}"
    folder = folders[0]
    id2label = json.loads((folder / "model_index.json").read_text()).get("id2label") or {}
    known = {word.strip() for value in id2label.values() for word in value.split(",")}
    if set(words) <= known:
        return folder, words
    own = [id2label[k].split(",")[0].strip() for k in sorted(id2label, key=int)][: len(words)]
    assert len(own) == len(words), f"{folder} has fewer than {len(words)} labels"
    return folder, own


def test_readme_examples_run(capsys, monkeypatch, tmp_path):
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, "README has no python examples"
    assert sum(CHECKPOINT in block for block in blocks) == 1, "the official-checkpoint example must run"
    readme_words = re.search(r"words = (\[.*?\])", text).group(1)
    folder, words = tiny_checkpoint(json.loads(readme_words))
    blocks = [block.replace(readme_words, json.dumps(words)) for block in blocks]
    monkeypatch.chdir(tmp_path)  # the examples write their images here
    namespace: dict = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest
    try:
        for block in blocks:
            exec(compile(block.replace(CHECKPOINT, repr(str(folder))), str(README), "exec"), namespace)  # noqa: S102
    finally:
        torch.set_num_threads(threads)
    assert "torch.Size([1000, 2, 1, 1])" in capsys.readouterr().out
    assert namespace["x_low_gm"].means.shape == (8, 4, 3, 16, 16)
    assert bool(namespace["loss"].isfinite())

    pipe = namespace["pipe"]
    assert pipe.transformer.dtype == torch.bfloat16
    for images in (namespace["ode_images"], namespace["sde_images"]):
        assert len(images) == len(words)
        assert all(image.size == images[0].size for image in images)
    assert namespace["ode_images"][0].tobytes() != namespace["sde_images"][0].tobytes()
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(f"{w}_gmsde2_step32.png" for w in words)
