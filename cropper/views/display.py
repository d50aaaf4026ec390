"""HTML views of a crop and of a prompt, for notebooks: plain strings, images inlined.

``CropResult._repr_html_`` returns :func:`result_html`, so evaluating a result in a notebook
shows the photo before and after, then each round's candidates. :class:`Messages` shows a
prompt exactly as the VLM read it. No IPython is needed: Jupyter calls ``_repr_html_``.
Every text is escaped, and every image is a bounded thumbnail so a notebook stays small.
"""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING

from PIL import Image

from cropper.core.messages import Conversation, ImagePart, TextPart

if TYPE_CHECKING:
    from cropper.agent.result import Candidate, CropResult, Round

#: Longer side, in pixels, of each picture of a view.
PHOTO_SIDE = 320  # before and after
ROUND_SIDE = 256  # a round's overlay
PROMPT_SIDE = 192  # an image inside a prompt
#: Characters of one reply shown before it is cut (a runaway reply can be megabytes).
REPLY_CHARS = 2000
#: Candidates listed when a result has no rounds (no VLM: a grid of ~100), best first.
TOP = 10

_CELL = "vertical-align:top;padding:4px 8px;text-align:left"
_HEADER = "<tr><th>#</th><th>box (px)</th><th>score</th><th>terms</th><th>source</th></tr>"


def result_html(result: CropResult) -> str:
    """``result`` as HTML: before and after, the request, then a row for each round."""
    from cropper.views.drawing import draw_result

    before = draw_result(result, rounds=(), max_side=PHOTO_SIDE, legend=False)
    head = (
        "<table><tr>"
        f"<td style='{_CELL}'>{_img(before, PHOTO_SIDE, 'the photo, chosen crop in red')}"
        "<br>before</td>"
        f"<td style='{_CELL}'>{_img(result.image, PHOTO_SIDE, 'the crop')}<br>after</td>"
        f"<td style='{_CELL}'>{_summary(result)}</td>"
        "</tr></table>"
    )
    rows = "".join(_round_row(result, r) for r in result.rounds)
    if not result.rounds and result.candidates:
        rows = _ranked_row(result)  # no VLM: grid candidates ranked by the head, no rounds
    return f"<div class='cropper-result'>{head}<table>{rows}</table></div>"


def _summary(result: CropResult) -> str:
    w, h = result.size
    facts = [
        ("task", result.task),
        ("photo", f"{result.source} ({w}x{h})" if result.source else f"{w}x{h}"),
        ("box (px)", _pixels(result.pixels)),
        ("score", f"{result.score:.3f}"),
    ]
    if result.ratio is not None:
        facts.append(("ratio", result.ratio.text))
    if result.subject is not None:
        s = result.subject
        where = f"({s.point[0]:.2f}, {s.point[1]:.2f})"
        facts.append(("subject", f"{s.text} at {where}" if s.text else where))
    if result.focus is not None:
        facts.append(("focus", f"({result.focus[0]:.2f}, {result.focus[1]:.2f})"))
    if result.faces is not None:
        facts.append(("faces protected", f"{len(result.faces)} found"))
    if result.output_size is not None:
        facts.append(("output size", f"{result.output_size[0]}x{result.output_size[1]}"))
    facts.append(("candidates", f"{len(result.candidates)} in {len(result.rounds)} rounds"))
    if result.fallback:
        facts.append(("fell back to", result.fallback))
    body = "".join(f"<tr><th style='{_CELL}'>{k}</th><td>{_esc(v)}</td></tr>" for k, v in facts)
    # The rounds show their own notes: here, the result's own (scoring, the choice, ...).
    own = [n for n in result.notes if not n.startswith("round ")]
    notes = "".join(f"<li>{_esc(n)}</li>" for n in own)
    return f"<table>{body}</table>" + (f"<ul>{notes}</ul>" if notes else "")


def _round_row(result: CropResult, r: Round) -> str:
    overlay = _img(result.draw(rounds=[r.index], max_side=ROUND_SIDE), ROUND_SIDE, r.stage)
    lines = _candidate_rows(result, list(enumerate(r.candidates)))
    notes = "".join(f"<li>{_esc(n)}</li>" for n in r.notes)
    replies = "".join(f"<pre>{_esc(_cut(reply))}</pre>" for reply in r.replies)
    return (
        "<tr>"
        f"<td style='{_CELL}'><b>round {r.index}: {_esc(r.stage)}</b><br>{overlay}</td>"
        f"<td style='{_CELL}'><table>{_HEADER}{lines}</table>"
        + (f"<ul>{notes}</ul>" if notes else "")
        + f"<details><summary>{len(r.replies)} raw replies</summary>{replies}</details>"
        f"<details><summary>prompt text</summary><pre>{_esc(r.prompt_text)}</pre></details>"
        "</td></tr>"
    )


def _ranked_row(result: CropResult) -> str:
    overlay = _img(result.draw(labels=False, max_side=ROUND_SIDE), ROUND_SIDE, "candidates")
    ranked = sorted(enumerate(result.candidates), key=lambda ic: -ic[1].score)[:TOP]
    return (
        f"<tr><td style='{_CELL}'><b>{len(result.candidates)} candidates</b><br>{overlay}</td>"
        f"<td style='{_CELL}'>the best {len(ranked)}<table>{_HEADER}"
        f"{_candidate_rows(result, ranked)}</table></td></tr>"
    )


def _candidate_rows(result: CropResult, numbered: list[tuple[int, Candidate]]) -> str:
    chosen = _chosen(result)
    return "".join(_candidate_row(i, c, result.size, chosen=c is chosen) for i, c in numbered)


def _candidate_row(i: int, c: Candidate, size: tuple[int, int], *, chosen: bool) -> str:
    terms = ", ".join(f"{k} {v:.2f}" for k, v in c.terms.items())
    mark = " <span title='the chosen crop'>&#9733;</span>" if chosen else ""
    source = f"{c.source}, {c.repair}" if c.repair else c.source
    return (
        f"<tr><td>{i}{mark}</td><td>{_pixels(c.box.to_pixels(size))}</td>"
        f"<td>{c.score:.3f}</td><td>{_esc(terms)}</td><td>{_esc(source)}</td></tr>"
    )


def _chosen(result: CropResult) -> Candidate | None:
    """The candidate the result chose: the last with its box and score (refining repeats)."""
    same = [c for c in result.candidates if c.box == result.box and c.score == result.score]
    return same[-1] if same else None


def conversation_html(conversation: Conversation) -> str:
    """The messages role by role: text in ``<pre>`` (escaped), images inline where they are."""
    blocks = []
    for message in conversation:
        parts = []
        for part in message.parts:
            if isinstance(part, TextPart):
                parts.append(f"<pre style='white-space:pre-wrap;margin:0'>{_esc(part.text)}</pre>")
            elif isinstance(part, ImagePart):
                w, h = part.image.size
                parts.append(_img(part.image, PROMPT_SIDE, f"{part.key or 'image'} {w}x{h}"))
        blocks.append(
            f"<div style='margin:6px 0'><b>[{_esc(message.role)}]</b>{''.join(parts)}</div>"
        )
    return f"<div class='cropper-messages'>{''.join(blocks)}</div>"


class Messages:
    """A prompt to look at: evaluate ``Messages(conversation)`` in a notebook cell.

    Outside a notebook, ``str()`` gives the plain transcript with images as ``<image>``.
    """

    def __init__(self, conversation: Conversation):
        self.conversation = list(conversation)

    def _repr_html_(self) -> str:
        return conversation_html(self.conversation)

    def __str__(self) -> str:
        from cropper.core.messages import conversation_text

        return conversation_text(self.conversation)

    def __repr__(self) -> str:
        images = sum(len(m.images) for m in self.conversation)
        return f"Messages({len(self.conversation)} messages, {images} images)"


def _img(image: Image.Image, side: int, alt: str) -> str:
    """``image`` as an inline JPEG thumbnail no longer than ``side`` pixels."""
    thumb = image.convert("RGB")
    thumb.thumbnail((side, side), Image.Resampling.BICUBIC)  # keeps the aspect, never enlarges
    buffer = io.BytesIO()
    # JPEG: a photo's thumbnail is several times smaller than as PNG.
    thumb.save(buffer, format="JPEG", quality=85)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f"<img src='data:image/jpeg;base64,{data}' alt='{_esc(alt)}' title='{_esc(alt)}' "
        f"width='{thumb.width}' height='{thumb.height}' style='margin:2px'>"
    )


def _pixels(box: tuple[int, int, int, int]) -> str:
    return "({}, {}, {}, {})".format(*box)


def _cut(text: str) -> str:
    if len(text) <= REPLY_CHARS:
        return text
    return f"{text[:REPLY_CHARS]}... ({len(text) - REPLY_CHARS} more characters)"


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)
