"""``docs/settings.md``: every setting of a config, generated from the code (``dbm-ltr settings``):
the sections' fields with their types, defaults and help, and each loss's and method's
parameters with the first sentence of their docstrings' ``Args:`` entries."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from typing import Any, get_type_hints

from .config import _SECTIONS

__all__ = ["settings_reference"]


def _arg_docs(factory: Callable) -> dict[str, str]:
    """``{parameter: first sentence}`` from the ``Args:`` section of a docstring."""
    doc = inspect.getdoc(factory) or ""
    out, current, in_args = {}, None, False
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped == "Args:":
            in_args = True
            continue
        if in_args:
            if stripped and not line.startswith(" "):
                break
            head, sep, text = stripped.partition(": ")
            if sep and line.startswith("    ") and not line.startswith("        ") and head.isidentifier():
                current = head
                out[current] = text
            elif current and stripped:
                out[current] += " " + stripped
    return {k: v.split(". ")[0].rstrip(".") for k, v in out.items()}


def settings_reference() -> str:
    """Every setting of a config as markdown: the sections' fields (type, default, meaning) and
    the parameters of each loss and method (``docs/settings.md`` is this text)."""
    from ..losses import LOSSES, loss_parameters
    from ..methods import METHODS, method_parameters

    def cell(value: Any) -> str:
        return f"`{value!r}`" if not isinstance(value, str) else f'`"{value}"`'

    def text(value: str) -> str:  # reST markup of the docstrings -> markdown, table-safe
        value = re.sub(r":\w+:`([^`]+)`", r"`\1`", value).replace("``", "`")
        return value.replace("|", "\\|")

    lines = [
        "# Settings",
        "",
        "Every setting of a run, with its default. A config file (or preset) sets them by section; "
        "`--set section.key=value` overrides one (a bare key works when it names one setting). "
        "This page is generated from the code: `dbm-ltr settings > docs/settings.md`.",
        "",
    ]
    for section, cls in _SECTIONS.items():
        lines += [
            f"## `{section}`",
            "",
            text((cls.__doc__ or "").strip()),
            "",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
        ]
        hints = get_type_hints(cls)
        defaults = cls()
        for f in dataclasses.fields(cls):
            lines.append(
                f"| `{section}.{f.name}` | {hints[f.name].__name__} | {cell(getattr(defaults, f.name))} | "
                f"{text(f.metadata.get('help', ''))} |"
            )
        lines.append("")
    for kind, registry, parameters, key in (
        ("loss", LOSSES, loss_parameters, "loss"),
        ("method", METHODS, method_parameters, "method"),
    ):
        lines += [f"## `{key}`", "", f"`{key}.name` picks the {kind}; its parameters are set as `{key}.PARAM`.", ""]
        for name in registry.names():
            params = parameters(name)
            entry = registry.lookup(name)
            factory = getattr(entry, "factory", entry)
            docs = {**_arg_docs(factory), **_arg_docs(getattr(factory, "build", factory))}
            lines += [f"### {kind} `{name}`", ""]
            if not params:
                lines += ["No parameters.", ""]
                continue
            lines += ["| key | default | meaning |", "|---|---|---|"]
            lines += [f"| `{key}.{p}` | {cell(v)} | {text(docs.get(p, ''))} |" for p, v in params.items()]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
