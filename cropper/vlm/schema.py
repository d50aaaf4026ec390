"""The JSON schema that constrains a VLM's reply to a list of boxes."""

from __future__ import annotations

from typing import Any

from cropper.core.boxes import check_coords


def boxes_schema(n_boxes: int, coords: str, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Schema of ``{"crops": [[x0, y0, x1, y1], ...]}`` with 1 to ``n_boxes`` crops.

    Integer conventions bound each number, so a constrained model cannot run on
    writing digits; ``pixel`` bounds by the larger side of ``size`` when given.
    """
    check_coords(coords)
    if coords == "norm1":
        number: dict[str, Any] = {"type": "number", "minimum": 0, "maximum": 1}
    else:
        top = 1000 if coords != "pixel" else (max(size) if size else 100000)
        number = {"type": "integer", "minimum": 0, "maximum": top}
    return {
        "type": "object",
        "properties": {
            "crops": {
                "type": "array",
                "items": {"type": "array", "items": number, "minItems": 4, "maxItems": 4},
                "minItems": 1,
                "maxItems": max(1, n_boxes),
            }
        },
        "required": ["crops"],
        "additionalProperties": False,
    }


def ground_schema(coords: str) -> dict[str, Any]:
    """Schema of ``{"box": [x0, y0, x1, y1]}``: one box, for grounding a subject."""
    schema = boxes_schema(1, coords)
    return {
        "type": "object",
        "properties": {"box": schema["properties"]["crops"]["items"]},
        "required": ["box"],
        "additionalProperties": False,
    }
