"""Write docs/config.md: every config key with its type, default and comment, read from textvae/config.py.

    python scripts/config_doc.py            # rewrite docs/config.md
    python scripts/config_doc.py --check    # exit 1 if docs/config.md is not what the code says

The comments are the dataclass fields' own (the one after the field and any comment lines right below it),
so the page cannot drift from the code: tests/test_config_doc.py runs the check.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "textvae" / "config.py"
TARGET = ROOT / "docs" / "config.md"
SECTIONS = {"DataConfig": "data", "ModelConfig": "model", "ObjectiveConfig": "objective", "OptimConfig": "optim",
            "TrainConfig": "train"}  # fmt: skip


def _comment(line: str) -> str:
    """The comment of a source line ('' without one); a '#' inside a quoted default does not count."""
    quote = None
    for i, char in enumerate(line):
        if char in "\"'" and quote in (None, char):
            quote = None if quote else char
        elif char == "#" and quote is None:
            return line[i + 1 :].strip()
    return ""


def fields(source: str) -> dict[str, list[tuple[str, str, str, str]]]:
    """section -> [(key, type, default, comment)] in the order of the dataclasses."""
    lines = source.splitlines()
    out: dict[str, list[tuple[str, str, str, str]]] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.ClassDef) and node.name in SECTIONS):
            continue
        rows = out.setdefault(SECTIONS[node.name], [])
        header = ""  # a comment line that opens a group of fields (it starts with a capital letter)
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            comment = [header, _comment(lines[item.lineno - 1])]
            header, following = "", item.end_lineno
            while following < len(lines) and lines[following].strip().startswith("#"):
                text = lines[following].strip().lstrip("#").strip()
                if text[:1].isupper():  # not a continuation: it introduces the fields below
                    header = f"({text})"
                else:
                    comment.append(text)
                following += 1
            default = ast.get_source_segment(source, item.value) if item.value is not None else ""
            kind = ast.get_source_segment(source, item.annotation)
            rows.append((item.target.id, kind, default, " ".join(c for c in comment if c)))
    return out


def render(source: str) -> str:
    parts = [
        "# Config keys",
        "",
        "Generated from `textvae/config.py` by `python scripts/config_doc.py` (a test checks that it is current).",
        "Every key can be set in a YAML file or with `--set SECTION.KEY=VALUE`; unknown keys, wrong types and",
        "keys the chosen model (or, for data.*, its family and tokenizer) does not read are refused with one line.",
    ]
    for section, rows in fields(source).items():
        parts += ["", f"## {section}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, kind, default, comment in rows:
            cell = comment.replace("|", "\\|")
            parts.append(f"| `{section}.{key}` | {kind} | `{default}` | {cell} |")
    return "\n".join(parts) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    text = render(SOURCE.read_text(encoding="utf-8"))
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.is_file() else ""
        if current != text:
            print(f"{TARGET} is out of date: run python scripts/config_doc.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
