"""docs/operations.md's "Every setting" lists every key the settings files accept
(the dataclasses that parse them), and nothing else."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from fedvault.client.site_config import SiteOptions
from fedvault.common.config import TrainingConfig
from fedvault.server.deploy import CoordinatorOptions

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _tables() -> list[list[str]]:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Every setting") :]
    tables = re.split(r"\n\*\*", section)[1:]
    return [re.findall(r"^\| `([a-z-]+)` \|", t, flags=re.M) for t in tables]


def _keys(cls: type) -> list[str]:
    return [f.name.replace("_", "-") for f in dataclasses.fields(cls)]


def test_every_settings_key_is_documented_once():
    coordinator, training, site = _tables()
    assert coordinator == _keys(CoordinatorOptions)
    assert training == _keys(TrainingConfig)
    assert site == _keys(SiteOptions)
