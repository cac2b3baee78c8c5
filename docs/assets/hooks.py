"""MkDocs hooks of this site (mkdocs.yml: ``hooks``); not a page.

- The scripts in ``examples/`` are published with the site, at
  ``examples/<name>``, so a page's link to ``../examples/<name>`` (the same
  link that works on GitHub) resolves and is checked like any other.

- Both ports' OpenAPI descriptions, generated from the code that serves them
  (``clipper.frontend.openapi``, ``clipper.management.openapi``), are published
  at ``reference/openapi/query.json`` and ``reference/openapi/management.json``;
  a ``<!-- openapi-routes: query -->`` (or ``management``) line on a page
  becomes the table of that port's routes.

Pages show code inline (no snippet includes, so they read on GitHub too);
``tests/docs/test_inlined.py`` checks each copy against its file.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files, InclusionLevel

PUBLISHED = ("*.py", "*.sh")
OPENAPI_DIR = "reference/openapi"
OPENAPI_MARKER = re.compile(r"^<!--\s*openapi-routes:\s*(query|management)\s*-->$", re.M)


@functools.cache
def _openapi() -> dict[str, dict[str, Any]]:
    from clipper.frontend.openapi import query_openapi
    from clipper.management.openapi import management_openapi

    return {"query": query_openapi(), "management": management_openapi()}


def _root(config: Any) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_files(files: Files, config: Any) -> Files:
    examples = _root(config) / "examples"
    for pattern in PUBLISHED:
        for path in sorted(examples.glob(pattern)):
            files.append(
                File(
                    f"../examples/{path.name}",
                    config.docs_dir,
                    config.site_dir,
                    config.use_directory_urls,
                    dest_uri=f"examples/{path.name}",
                    inclusion=InclusionLevel.INCLUDED,
                )
            )
    for name, doc in _openapi().items():
        content = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
        files.append(File.generated(config, f"{OPENAPI_DIR}/{name}.json", content=content))
    return files


def _security(doc: dict[str, Any], op: dict[str, Any]) -> str:
    options = op.get("security", doc.get("security", []))
    names = [" + ".join(f"`{n}`" for n in option) for option in options if option]
    if not names:
        return "open"
    return " or ".join(names) + (", or open" if {} in options else "")


def routes_table(doc: dict[str, Any]) -> str:
    """A Markdown table of a document's operations: method, path, summary, access, statuses."""
    rows = ["| route | what | access | answers |", "|---|---|---|---|"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            summary = op.get("summary", "").replace("|", "\\|")
            statuses = ", ".join(sorted(op["responses"]))
            rows.append(
                f"| `{method.upper()} {path}` | {summary} | {_security(doc, op)} | {statuses} |"
            )
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    return OPENAPI_MARKER.sub(lambda m: routes_table(_openapi()[m.group(1)]), markdown)
