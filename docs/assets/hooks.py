"""MkDocs hooks of this site (mkdocs.yml: ``hooks``); not a page.

- The scripts in ``examples/`` are published with the site, at
  ``examples/<name>``, so a page's link to ``../examples/<name>`` (the same
  link that works on GitHub) resolves and is checked like any other.

Pages show code inline (no snippet includes, so they read on GitHub too);
``tests/docs/test_inlined.py`` checks each copy against its file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files, InclusionLevel

PUBLISHED = ("*.py", "*.sh")


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
    return files
