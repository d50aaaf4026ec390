"""A debug folder for one crop: overlays, the exact prompts the VLM read, its raw replies.

Layout of ``write_debug(result, "debug/photo")``::

    debug/photo/overlay.png              every candidate, a colour a round; the chosen crop
    debug/photo/crop.jpg                 the chosen crop
    debug/photo/trace.json               task, request, box, score; every round's candidates
    debug/photo/round-0-propose/
        prompt.txt                       the rendered text, [image ...] where each image goes
        prompt.json                      the messages: role, then text and image parts
        replies.json                     the replies exactly as the model wrote them
        overlay.png                      this round's candidates
    debug/photo/images/<hash>.png        each image a prompt carried, once

A photo that failed gets the same folder without the crop and overlays: ``trace.json``
holds the error, and the rounds it got through (the failed one last) their prompts and
replies.

Images are named by a hash of their pixels, so an exemplar shown in every round (or, with
``images=`` a shared folder, to every photo of a batch) is written once. Nothing here holds
credentials: a result never carries the backend's API key.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from cropper.core.fileio import save_image, write_text
from cropper.core.messages import Conversation, ImagePart, TextPart

if TYPE_CHECKING:
    from cropper.agent.result import Candidate, CropResult, PartialCrop, Round


def write_debug(
    result: CropResult | PartialCrop,
    folder: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
) -> Path:
    """Write ``result``'s debug folder (layout above) and return it.

    ``images`` is where prompt images go (default ``folder/images``); a batch passes one
    shared folder so exemplars common to many photos are saved once. ``result`` may be
    the :class:`~cropper.agent.result.PartialCrop` of a photo that failed.
    """
    folder = Path(folder)
    image_dir = Path(images) if images is not None else folder / "images"
    if not hasattr(result, "candidates"):  # a PartialCrop: a photo that failed
        return _write_partial(result, folder, image_dir)
    size = result.size
    save_image(result.draw(), folder / "overlay.png")
    save_image(result.image, folder / "crop.jpg")
    rounds = []
    for r in result.rounds:
        where = folder / f"round-{r.index}-{r.stage}"
        _write_prompt(r.prompt, where, image_dir)
        write_text(where / "replies.json", json.dumps(list(r.replies), indent=1) + "\n")
        save_image(result.draw(rounds=[r.index]), where / "overlay.png")
        rounds.append(_round_json(r, size, where.name))
    trace = {
        "image": result.source,
        "task": result.task,
        "size": list(size),
        "subject": _subject_json(result),
        "ratio": result.ratio.text if result.ratio else None,
        "box": list(result.pixels),
        "box_normalized": _rounded(result.box.as_array()),
        "score": result.score,
        "focus": list(result.focus) if result.focus is not None else None,
        "faces": None if result.faces is None else [list(f.to_pixels(size)) for f in result.faces],
        "keep": [list(k.to_pixels(size)) for k in result.keep],
        "avoid": [list(a.to_pixels(size)) for a in result.avoid],
        "output_size": list(result.output_size) if result.output_size else None,
        "fallback": result.fallback,
        "notes": list(result.notes),
        "rounds": rounds,
    }
    write_text(folder / "trace.json", json.dumps(trace, indent=1) + "\n")
    return folder


def _write_partial(partial: PartialCrop, folder: Path, image_dir: Path) -> Path:
    size = partial.photo.size if partial.photo is not None else None
    rounds = []
    for r in partial.rounds:
        where = folder / f"round-{r.index}-{r.stage}"
        _write_prompt(r.prompt, where, image_dir)
        write_text(where / "replies.json", json.dumps(list(r.replies), indent=1) + "\n")
        rounds.append(_round_json(r, size, where.name))
    trace = {
        "image": partial.source,
        "task": partial.task,
        "size": list(size) if size else None,
        "error": partial.error,
        "rounds": rounds,
    }
    write_text(folder / "trace.json", json.dumps(trace, indent=1) + "\n")
    return folder


def _write_prompt(prompt: Conversation, where: Path, image_dir: Path) -> None:
    text_lines: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in prompt:
        parts: list[dict[str, Any]] = []
        chunks: list[str] = []
        for part in message.parts:
            if isinstance(part, TextPart):
                parts.append({"type": "text", "text": part.text})
                chunks.append(part.text)
            elif isinstance(part, ImagePart):
                path = _save_once(part.image, image_dir)
                ref = os.path.relpath(path, where).replace(os.sep, "/")
                w, h = part.image.size
                parts.append({"type": "image", "file": ref, "size": [w, h], "key": part.key})
                chunks.append(f"[image {ref} {w}x{h}]")
        messages.append({"role": message.role, "content": parts})
        text_lines.append(f"[{message.role}]\n{''.join(chunks)}")
    write_text(where / "prompt.txt", "\n".join(text_lines) + "\n")
    write_text(where / "prompt.json", json.dumps(messages, indent=1) + "\n")


def _save_once(image: Image.Image, image_dir: Path) -> Path:
    """Save ``image`` as ``<hash of its pixels>.png`` unless that file is already there."""
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(f"{image.mode} {image.size}".encode())
    digest.update(image.tobytes())
    path = image_dir / f"{digest.hexdigest()[:16]}.png"
    if not path.exists():
        save_image(image, path)
    return path


def _round_json(r: Round, size: tuple[int, int] | None, folder: str) -> dict[str, Any]:
    return {
        "index": r.index,
        "stage": r.stage,
        "folder": folder,
        "notes": list(r.notes),
        "dropped": list(r.dropped),
        "candidates": [_candidate_json(c, size) for c in r.candidates],
    }


def _candidate_json(c: Candidate, size: tuple[int, int] | None) -> dict[str, Any]:
    return {
        "box": list(c.box.to_pixels(size)) if size else None,
        "box_normalized": _rounded(c.box.as_array()),
        "score": c.score,
        "terms": c.terms,
        "source": c.source,
        "repair": c.repair,
    }


def _subject_json(result: CropResult) -> dict[str, Any] | None:
    s = result.subject
    if s is None:
        return None
    return {
        "point": list(s.point),
        "box": _rounded(s.box.as_array()) if s.box else None,
        "text": s.text,
        "source": s.source,
    }


def _rounded(values: Any) -> list[float]:
    return [round(float(v), 6) for v in values]
