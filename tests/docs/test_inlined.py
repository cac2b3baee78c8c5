"""Pages show their code inline, readable on GitHub and in a terminal, and each
copy is exactly its file, so ``examples/`` stays the runnable source of truth.

A block copied from a file sits right under ``<!-- source: PATH ... -->``
(a comment GitHub and the site do not show); its fence may also say
``title="PATH"``. No page includes code with ``--8<--`` snippet lines any more.
"""

from __future__ import annotations

import difflib
import re

import pytest

from tests.docs.blocks import DOCS, EXAMPLES, ROOT, SNIPPET, Page, parse_blocks

PAGES = sorted(
    ["README.md", *(str(p.relative_to(ROOT)) for p in DOCS.rglob("*.md"))],
)
TITLE = re.compile(r'title="([^"]+)"')


def copies() -> list[tuple[str, int, str, str]]:
    """(page, line, source, code) of every inlined block."""
    found = []
    for path in PAGES:
        for block in Page.read(path).blocks:
            if block.source is not None:
                found.append((path, block.line, block.source, block.code))
    return found


def test_no_page_includes_code_with_snippet_lines():
    for path in PAGES:
        lines = (ROOT / path).read_text().splitlines()
        bad = [i + 1 for i, line in enumerate(lines) if SNIPPET.search(line)]
        assert not bad, f"{path}:{bad}: inline the file instead of a --8<-- line"


@pytest.mark.parametrize(("page", "line", "source", "code"), copies())
def test_each_inlined_block_is_its_file(page, line, source, code):
    path = ROOT / source
    assert path.is_file(), f"{page}:{line}: the source {source} does not exist"
    want = path.read_text()
    if code != want:
        diff = "".join(
            difflib.unified_diff(
                want.splitlines(keepends=True),
                code.splitlines(keepends=True),
                fromfile=source,
                tofile=f"{page}:{line}",
            )
        )
        pytest.fail(f"{page}:{line} differs from {source}; copy the file again:\n{diff}")


def test_every_example_shown_is_marked_with_its_source():
    shown = {source for _, _, source, _ in copies()}
    examples = {f"examples/{p.name}" for p in EXAMPLES.glob("*.py")}
    # oip_client.py is linked from docs/oip.md, not shown.
    assert examples - {"examples/oip_client.py"} <= shown
    for path in PAGES:
        for block in Page.read(path).blocks:
            title = TITLE.search(block.info)
            if title and (ROOT / title.group(1)).is_file():
                assert block.source == title.group(1), (
                    f"{path}:{block.line}: a block titled {title.group(1)} must be "
                    f"marked <!-- source: {title.group(1)} --> and be its copy"
                )


def test_a_drifted_copy_is_caught():
    (block,) = parse_blocks("<!-- source: examples/shout.py -->\n```python\nold\n```\n")
    assert block.source == "examples/shout.py"
    assert block.code != (ROOT / "examples/shout.py").read_text()
