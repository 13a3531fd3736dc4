"""Write the settings tables of docs/configuration.md from the settings models.

Only the part between the BEGIN/END GENERATED markers is replaced; the prose around it is
edited by hand.

Usage:
    python scripts/gen_config_docs.py           # rewrite the tables
    python scripts/gen_config_docs.py --check   # exit 1 if docs/configuration.md is stale
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without the package installed
    sys.path.insert(0, str(ROOT))

from shared.settings import CloudSettings, ComponentSettings, EdgeSettings  # noqa: E402

DOC = ROOT / "docs" / "configuration.md"
BEGIN = "<!-- BEGIN GENERATED: scripts/gen_config_docs.py; edit the models, then `make docs` -->"
END = "<!-- END GENERATED -->"
COMPONENTS: list[tuple[str, type[ComponentSettings]]] = [
    ("Edge daemon (`autoglm edge serve`)", EdgeSettings),
    ("Cloud service (`autoglm cloud serve`)", CloudSettings),
]


def _strip_annotated(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _section(annotation: Any) -> type[BaseModel] | None:
    annotation = _strip_annotated(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def type_name(annotation: Any) -> str:
    """A reader's name for a type: "float", "list of string", "one of `a`, `b`", ..."""
    annotation = _strip_annotated(annotation)
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(arg) for arg in get_args(annotation))
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in get_args(annotation))
    if origin is list:
        return f"list of {type_name(get_args(annotation)[0])}"
    if annotation is SecretStr:
        return "secret string"
    names = {bool: "bool", int: "int", float: "float", str: "string", Path: "path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def field_type(field: FieldInfo) -> str:
    """The field's type with its range, e.g. "float in [0, 1], or unset"."""
    annotation = _strip_annotated(field.annotation)
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else ()
    optional = type(None) in members
    if optional:
        present = [arg for arg in members if arg is not type(None)]
        annotation = present[0] if len(present) == 1 else Union[tuple(present)]  # noqa: UP007
    text = type_name(annotation) + bounds(field)
    return f"{text}, or unset" if optional else text


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def bounds(field: FieldInfo) -> str:
    """The field's numeric range as text, e.g. " in [0, 1]" or " ≥ 1"; "" when unbounded."""
    low = high = ""
    low_open = high_open = False
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            low = _number(item.ge)
        elif isinstance(item, annotated_types.Gt):
            low, low_open = _number(item.gt), True
        elif isinstance(item, annotated_types.Le):
            high = _number(item.le)
        elif isinstance(item, annotated_types.Lt):
            high, high_open = _number(item.lt), True
    if low and high:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low:
        return f" {'>' if low_open else '≥'} {low}"
    if high:
        return f" {'<' if high_open else '≤'} {high}"
    return ""


def default_text(field: FieldInfo) -> str:
    """The default as it would be written in TOML."""
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, Path):
        value = str(value)
    return f"`{json.dumps(value)}`"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rows(
    model: type[BaseModel], settings: type[ComponentSettings], path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], list[str]]]:
    """(table path, row cells) of every leaf field, depth first, a table's own fields first."""
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        section = _section(field.annotation)
        if section is not None:
            nested.append((name, section))
            continue
        assert field.description, f"{model.__name__}.{name} has no description"
        key = ".".join((*path, name))
        yield (
            path,
            [
                f"`{key}`",
                field_type(field),
                default_text(field),
                f"`{settings.env_name(*path, name)}`",
                _escape(field.description),
            ],
        )
    for name, section in nested:
        yield from rows(section, settings, (*path, name))


def render() -> str:
    """The generated part of docs/configuration.md, markers included."""
    out = [BEGIN, ""]
    for title, settings in COMPONENTS:
        out += [f"### {title}", ""]
        current: tuple[str, ...] | None = None
        for path, cells in rows(settings, settings, ()):
            if path != current:
                current = path
                heading = f"`[{'.'.join(path)}]`" if path else "top level"
                if out[-1]:
                    out.append("")
                out += [f"#### {settings.__name__}: {heading}", ""]
                out += [
                    "| key | type | default | environment variable | description |",
                    "|---|---|---|---|---|",
                ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out.append(END)
    return "\n".join(out) + "\n"


def updated(text: str) -> str:
    """text with its generated part replaced by a fresh render()."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"gen_config_docs: {DOC} lacks the markers {BEGIN!r} ... {END!r}")
    rest = text[end + len(END) :].removeprefix("\n")
    return text[:start] + render() + rest


def main(argv: list[str] | None = None) -> int:
    """Rewrite the tables, or with --check only compare them; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the doc is out of date")
    args = parser.parse_args(argv)
    current = DOC.read_text(encoding="utf-8")
    fresh = updated(current)
    relative = DOC.relative_to(ROOT)
    if args.check:
        if fresh != current:
            print(
                f"{relative} is out of date with shared/settings: run `make docs`", file=sys.stderr
            )
            return 1
        print(f"{relative} is up to date")
        return 0
    if fresh != current:
        DOC.write_text(fresh, encoding="utf-8")
        print(f"updated {relative}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
