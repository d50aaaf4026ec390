"""The optional composition step (after KCM/CACNet): which composition suits the photo.

The compositions are data: ``compositions.json`` in the prompt folder maps each name to
a one-line description, and a prompt engineer edits it like any template. The VLM picks
one, held to the names by a JSON schema; the propose prompt then asks for crops that
follow it, and the trace records the choice.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cropper.core.errors import ConfigError

#: The file in a prompt folder that lists the compositions the VLM may choose from.
COMPOSITIONS_FILE = "compositions.json"


@dataclass(frozen=True)
class Composition:
    name: str  # e.g. "rule of thirds"
    description: str  # what a crop that follows it looks like, in one line


def load_compositions(folder: str | Path) -> list[Composition]:
    """The compositions of a prompt folder's ``compositions.json``, in the file's order."""
    path = Path(folder) / COMPOSITIONS_FILE
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path} is missing: the composition step needs it; copy it from the shipped prompts"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable JSON file ({exc})") from None
    ok = (
        isinstance(table, dict)
        and table
        and all(isinstance(k, str) and k.strip() and isinstance(v, str) for k, v in table.items())
    )
    if not ok:
        raise ConfigError(
            f"{path}: expected a JSON object of composition names and descriptions, e.g. "
            '{"rule of thirds": "the subject sits on a third line"}'
        )
    return [Composition(name.strip(), text.strip()) for name, text in table.items()]


def composition_schema(compositions: list[Composition]) -> dict[str, Any]:
    """Schema of ``{"composition": NAME}``, NAME one of ``compositions``."""
    return {
        "type": "object",
        "properties": {"composition": {"enum": [c.name for c in compositions]}},
        "required": ["composition"],
        "additionalProperties": False,
    }


def parse_composition(reply: str, compositions: list[Composition]) -> Composition | None:
    """The composition a reply names, or None; never raises.

    Its JSON ``composition`` field when that is a known name, else the name written
    earliest in its text (the longer at a tie: "frame within a frame", not "frame").
    """
    by_name = {c.name.lower(): c for c in compositions}
    match = re.search(r'"composition"\s*:\s*"([^"]*)"', reply or "")
    if match and match.group(1).strip().lower() in by_name:
        return by_name[match.group(1).strip().lower()]
    text = (reply or "").lower()
    found = [
        (m.start(), -len(name), name)
        for name in by_name
        for m in [re.search(rf"\b{re.escape(name)}\b", text)]
        if m
    ]
    return by_name[min(found)[2]] if found else None
