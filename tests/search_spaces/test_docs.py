from __future__ import annotations

import re
from pathlib import Path

from search_spaces import SearchSpace

DOC = Path(__file__).resolve().parents[2] / "docs" / "search-spaces.md"


def test_the_documented_example_is_a_valid_space() -> None:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert match is not None
    space = SearchSpace.from_yaml(match[1], file=str(DOC))
    assert space.name == "nalu-vs-nmu"
    assert space.names.index("gate_init_bias") > space.names.index("gate")
    assert sum(p.conditional for p in space.parameters) == 9
