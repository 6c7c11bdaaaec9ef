"""Template hygiene: mistakes that render as visible text instead of failing."""

from __future__ import annotations

from pathlib import Path

import pytest

TEMPLATES = sorted((Path(__file__).resolve().parent.parent / "templates").rglob("*.html"))


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: str(p.name))
def test_no_comment_tag_spans_lines(path):
    """Django's {# #} is one line only: a comment spread over lines shows on the page. Use {% comment %}."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if "{#" in line:
            assert "#}" in line[line.index("{#"):], f"{path}:{number}: {{# without #}} on the same line"


def test_there_are_templates_to_check():
    assert len(TEMPLATES) > 10
