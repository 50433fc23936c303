"""The README's verdict table of the claims study is the one `claims report` writes from `claims.json`: a
verdict changed by new points must reach the README too."""

import json
from pathlib import Path

from benchmarks import claims

ROOT = Path(__file__).resolve().parents[2]


def target_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("| T") and "_" in line.split("|")[1]]


def test_readme_verdicts_match_claims_json():
    testbeds = json.loads((ROOT / "benchmarks/results/claims.json").read_text())["testbeds"]
    expected = target_rows(claims.verdicts_md(testbeds))
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Does GMFlow beat flow matching?", 1)[1].split("\n## ", 1)[0]
    assert expected, "claims.json holds no targets"
    assert target_rows(section) == expected
