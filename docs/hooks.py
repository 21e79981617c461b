"""MkDocs hooks: each command page's option tables are written from the config classes when the site is built
(``<!-- options: train -->`` becomes the tables `fm2edge train --help` describes), and the build fails when a
command has no page or a public name of the Python API has no docstring."""

from __future__ import annotations

import importlib
import re

from mkdocs.exceptions import PluginError

MARK = re.compile(r"<!-- options: (\w+) -->")
COMMAND_LINE = re.compile(r"<!-- command: (\w+) -->")
COMMAND_TABLE = "<!-- commands -->"
# the modules whose public names (__all__) make up the Python API page
API_MODULES = ["fm2edge", "fm2edge.models", "fm2edge.config"]


def on_files(files, config):
    from fm2edge.reference import commands

    missing = [c for c in commands() if files.get_file_from_path(f"commands/{c}.md") is None]
    if missing:
        raise PluginError(f"no page for the command(s) {', '.join(missing)}: add docs/commands/<command>.md")
    undocumented = [f"{m}.{name}" for m in API_MODULES for name in importlib.import_module(m).__all__
                    if not (getattr(importlib.import_module(m), name).__doc__ or "").strip()]
    if undocumented:
        raise PluginError(f"public names without a docstring: {', '.join(undocumented)}")
    return files


def on_page_markdown(markdown, page, config, files):
    from fm2edge.reference import commands, options_markdown

    table = "\n".join(["| command | what it does |", "|---|---|"] +
                      [f"| [`fm2edge {c}`]({c}.md) | {text} |" for c, text in commands().items()])
    markdown = markdown.replace(COMMAND_TABLE, table)
    markdown = COMMAND_LINE.sub(lambda m: f"`fm2edge {m.group(1)}`: {commands()[m.group(1)]}.", markdown)
    return MARK.sub(lambda m: options_markdown(m.group(1)), markdown)
