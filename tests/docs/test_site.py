"""The documentation site builds strictly, and the reference pages miss nothing.

``make test`` runs these, so a broken link, a missing page or an
undocumented method, command, flag or route fails the suite. The examples
themselves run in ``test_examples.py``.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import subprocess
import sys

import pytest
import typer

from clipper.admin import ClipperConnection, LocalContainerManager
from clipper.cli import app as cli_app
from clipper.settings import Settings
from tests.docs.blocks import (
    DOCS,
    EXAMPLES,
    EXECUTED,
    NOT_RUN,
    ROOT,
    Page,
    commands,
    example_runs,
    is_skipped,
    matches,
    output_matches,
    parse_blocks,
)


def read(page: str) -> str:
    return (DOCS / page).read_text()


# -- the site ---------------------------------------------------------------------------


def test_the_site_builds_strictly(tmp_path):
    """``mkdocs build --strict``: a broken link, anchor or nav entry fails."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=tmp_path,  # not the repository: includes must not depend on the working directory
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's notice about its successor
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    site = tmp_path / "site"
    # The inlined examples are on the pages; examples are published too.
    sklearn = (site / "howto" / "sklearn.html").read_text()
    assert "deploy_sklearn_model" in sklearn and "--8&lt;--" not in sklearn
    assert (site / "examples" / "oip_client.py").is_file()
    # Offline: no fonts or scripts fetched from elsewhere.
    index = (site / "index.html").read_text()
    assert "fonts.googleapis.com" not in index and "unpkg.com" not in index


def test_the_readme_links_resolve():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert len(local) > 10
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


# -- references: complete with respect to the code ---------------------------------------


def test_every_admin_client_method_is_in_the_reference():
    page = read("reference/python-client.md")
    public = [n for n, _ in inspect.getmembers(ClipperConnection) if not n.startswith("_")]
    missing = [n for n in public if f"`{n}(" not in page and f"`{n}`" not in page]
    assert not missing, f"reference/python-client.md does not document {missing}"
    fields = [f.name for f in dataclasses.fields(LocalContainerManager)]
    missing = [n for n in fields if f"`{n}`" not in page]
    assert not missing, f"reference/python-client.md does not document the fields {missing}"


def test_every_management_route_is_in_the_reference():
    from clipper.management.api import FIELDS

    page = read("management-api.md")
    missing = [r for r in FIELDS if not re.search(rf"\| `{r}` \|", page)]
    assert not missing, f"management-api.md has no table row for the routes {missing}"


def test_every_cli_command_and_option_is_in_the_reference():
    page = read("reference/cli.md")
    group = typer.main.get_command(cli_app)  # typer's own (vendored) click objects
    for param in group.params:
        for opt in param.opts:
            assert f"`{opt}`" in page, f"global option {opt} is not in reference/cli.md"
    commands_ = group.commands  # type: ignore[attr-defined]
    assert len(commands_) >= 15
    for name, command in commands_.items():
        assert f"`clipper {name}" in page, f"command `clipper {name}` is not in reference/cli.md"
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                for opt in param.opts:
                    assert f"`{opt}`" in page, f"`clipper {name} {opt}` is not in reference/cli.md"


def test_every_server_flag_and_setting_is_in_the_reference():
    page = read("reference/cli.md")
    help_text = subprocess.run(
        [sys.executable, "-m", "clipper.server", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    flags = set(re.findall(r"(--[a-z][a-z-]+)", help_text)) - {"--help"}
    assert "--demo" in flags and len(flags) > 20
    for flag in sorted(flags):
        assert f"| `{flag}` |" in page, f"server flag {flag} is not in reference/cli.md"
    for f in dataclasses.fields(Settings):
        assert f"`CLIPPER_{f.name.upper()}`" in page, f"setting {f.name} has no env in the page"


def test_every_query_route_and_error_is_in_the_reference():
    page = read("reference/rest-api.md")
    source = (ROOT / "src" / "clipper" / "frontend" / "query.py").read_text()
    paths = set(re.findall(r'path == "(/[a-z]+)"', source))
    assert {"/health", "/ready", "/metrics"} <= paths
    for path in paths:
        assert f"`GET {path}`" in page, f"route {path} is not in reference/rest-api.md"
    actions = re.findall(r'route.endswith\("/(\w+)"\)', source)
    assert actions == ["predict", "update"]
    for action in actions:
        assert f"`POST /{{app}}/{action}`" in page
    errors = re.findall(r'_error\((\d{3}), "([^"]+)"', source)
    h1 = (ROOT / "src" / "clipper" / "http" / "server.py").read_text()
    errors += re.findall(r'(\d{3}), "([a-z][^"]+)"', h1)
    assert len(errors) >= 12
    for status, error in errors:
        assert re.search(rf"\| {status} \| `{re.escape(error)}` \|", page), (
            f"error {status} {error!r} is not in the table of reference/rest-api.md"
        )


def test_the_nav_links_the_pages_others_write():
    config = (ROOT / "mkdocs.yml").read_text()
    for page in (
        "rpc-protocol.md",
        "management-api.md",
        "oip.md",
        "observability.md",
        "benchmarks.md",
        "reliability.md",
        "deployment.md",
    ):
        assert f": {page}" in config, f"{page} is not in the nav"


# -- every code block on the executed pages is run -------------------------------------


@pytest.mark.parametrize("path", EXECUTED)
def test_every_block_of_an_executed_page_is_run(path):
    page = Page.read(path)
    runs = example_runs(page)
    not_run = 0
    for block in page.blocks:
        if block.lang == "python":
            if block.source is not None:
                assert block.source in runs, (
                    f"{path}:{block.line}: {block.source} is shown but never run"
                )
            else:
                assert path == "README.md", f"{path}:{block.line}: inline Python is not run"
        elif block.lang == "bash":
            assert commands(block), f"{path}:{block.line}: an empty bash block"
        else:
            not_run += 1
    assert not_run == NOT_RUN.get(path, 0), (
        f"{path} has {not_run} block(s) that are not run; NOT_RUN says {NOT_RUN.get(path, 0)}"
    )
    for script in runs:
        assert (ROOT / script).is_file(), f"{path} runs {script}, which does not exist"


def test_every_example_is_shown_and_run():
    shown: set[str] = set()
    run: set[str] = set()
    for path in EXECUTED:
        page = Page.read(path)
        run |= example_runs(page)
        shown |= {b.source for b in page.blocks if b.source is not None}
    examples = {f"examples/{p.name}" for p in EXAMPLES.glob("*.py")}
    assert examples <= run, f"examples no page runs: {sorted(examples - run)}"
    # oip_client.py is documented in docs/oip.md, which links it.
    assert examples - {"examples/oip_client.py"} <= shown


# -- the harness itself -------------------------------------------------------------------


def test_commands_and_their_outputs_are_read_from_a_block():
    (bash,) = parse_blocks(
        "text\n\n```bash\nmake run  # note\ncurl -d '{}' \\\n  localhost:1337/a/predict\n"
        '# {"output": 1}\n\n# a note\nclipper apps\n```\n'
    )
    got = commands(bash)
    assert [c.text for c in got] == [
        "make run",
        "curl -d '{}' \\\n  localhost:1337/a/predict",
        "clipper apps",
    ]
    assert [c.expected for c in got] == [None, ['{"output": 1}'], None]
    assert is_skipped(got[0]) and not is_skipped(got[1])


def test_outputs_match_as_json_or_text():
    assert matches({"query_id": 0, "output": 1.0}, {"query_id": 9, "output": 1.00001})
    assert not matches({"output": 1}, {"output": 1.0})
    assert not matches({"output": True}, {"output": 1})
    assert matches(["a", "..."], ["a", "b", "c"])
    assert output_matches(['{"a":1}', "model m ..."], '{"a": 1}\nmodel m version 1\n') is None
    assert output_matches(["x"], "y\n") is not None
    assert output_matches(["x"], "x\nmore\n") is not None
