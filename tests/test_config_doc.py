"""docs/config.md lists every config key with its comment, as the code has it."""

import dataclasses
import sys
from pathlib import Path

from textvae.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import config_doc  # noqa: E402


def test_config_page_is_current():
    assert config_doc.TARGET.read_text(encoding="utf-8") == config_doc.render(
        config_doc.SOURCE.read_text(encoding="utf-8")
    ), "docs/config.md is out of date: run python scripts/config_doc.py"


def test_every_key_is_listed_with_a_comment():
    listed = config_doc.fields(config_doc.SOURCE.read_text(encoding="utf-8"))
    for section in dataclasses.fields(Config):
        keys = [f.name for f in dataclasses.fields(section.type if isinstance(section.type, type) else
                                                   type(getattr(Config(), section.name)))]  # fmt: skip
        rows = listed[section.name]
        assert [row[0] for row in rows] == keys, section.name
        assert all(row[3] for row in rows), [row[0] for row in rows if not row[3]]


def test_a_comment_after_a_quoted_hash_is_found():
    assert config_doc._comment('    x: str = "a#b"  # the comment') == "the comment"
    assert config_doc._comment("    y: int = 3") == ""
