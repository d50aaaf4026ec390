"""Read crops out of a VLM's reply, whatever dialect it wrote, without ever raising.

Each dialect has its own small reader, and all of them feed one sanitising step:

1. *Structured*: every top-level ``[...]`` or ``{...}`` span (so code fences and
   prose around them do not matter) is loaded by ``json.loads``, then by
   ``json.loads`` after light repair (trailing commas, unquoted keys), then by
   ``ast.literal_eval`` (single quotes, tuples). A span cut off by the token limit
   is closed after its last complete element, so its complete boxes survive.
   The loaded value is walked for boxes (:func:`_walk`): ``{"crops": [...]}`` or
   any other wrapper, arrays of numbers (:func:`_group_from_seq`), and objects
   naming a box by a key (``bbox_2d``, ``bbox``, ``box``, ``crop``...) or by its
   corners (``x1, y1, x2, y2``, ``left, top, right, bottom``, ``x0, y0, x1, y1``...),
   with an optional ``score`` and ``point``.
2. *Tuples*: the paper's formats, found by a regex: ``(s, x1, y1, x2, y2)``,
   ``((cx, cy), x1, y1, x2, y2)``, ``(x1, y1, x2, y2)``, in round or square
   brackets, anywhere in prose or numbered lists; Qwen2-VL's
   ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``.
3. *Bare numbers*: a run of four or five comma-separated numbers in prose, unless
   the token limit may have cut its last number (:func:`_maybe_cut`).

A later reader runs only when the earlier ones found no group of numbers.

Conventions, decided once:

- Boxes are ``x1, y1, x2, y2`` (left, top, right, bottom) in every dialect; ``yxyx``
  is never guessed, not even under Gemini's ``box_2d`` key, because the prompts
  ask for ``x1, y1, x2, y2``.
- A group of five plain numbers is ``(score, x1, y1, x2, y2)``: the score leads, as
  in the paper's free-form format and the refine prompts. A group of five whose
  first element is a pair is the subject format ``((cx, cy), x1, y1, x2, y2)``;
  the point is reported apart and is not part of the box. Other lengths are not
  boxes.
- There is no ``"auto"`` convention: a 600-pixel-wide photo's pixel boxes look
  exactly like 0-1000 boxes, so guessing would be wrong silently.

Sanitising: corners are reordered; a box is dropped when non-finite, when it does
not overlap the image, when it lies far outside it (more than
:data:`ABSURD_MARGIN` of the frame: a wrong convention, not an overshoot), or when
degenerate after clamping (:func:`cropper.core.boxes.sanitize`); near repeats are
dropped (:func:`cropper.core.boxes.dedupe`).
"""

from __future__ import annotations

import ast
import json
import logging
import math
import re
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cropper.core.boxes import Box, Size, check_coords, dedupe, sanitize, to_unit
from cropper.core.errors import ConfigError

__all__ = ["ABSURD_MARGIN", "ParsedReply", "parse_boxes", "parse_reply"]

logger = logging.getLogger(__name__)

#: Only this many leading characters of a reply are read. A real reply with a few
#: crops is far shorter; the cap bounds the work on a runaway one (a truncated
#: JSON cut here is repaired like one cut by the token limit).
MAX_CHARS = 200_000
#: ``ast.literal_eval`` is slower and hungrier than ``json``: only spans up to this long.
MAX_LITERAL_CHARS = 20_000
#: Groups of numbers read from one reply beyond this many are ignored.
MAX_GROUPS = 256
#: Nesting deeper than this is not a reply of boxes.
MAX_DEPTH = 32
#: Top-level spans read from one reply beyond this many are ignored.
MAX_SPANS = 1024
#: How many cut points of a truncated span are tried, latest first.
MAX_CUTS = 8
#: A box reaching more than this share of the frame outside the image is dropped.
ABSURD_MARGIN = 0.5

_FAIL = object()


@dataclass(frozen=True)
class ParsedReply:
    """The boxes read from one reply, with what came along with each."""

    boxes: tuple[Box, ...]
    scores: tuple[float | None, ...]  # the leading score of (s, x1, y1, x2, y2), per box
    points: tuple[tuple[float, float] | None, ...]  # the subject point, normalized, per box
    reason: str  # "" when boxes were found, else why none were
    dropped: tuple[str, ...] = ()  # why each box written but not kept was dropped


@dataclass(frozen=True)
class _Group:
    """Four box numbers in the caller's convention, as written, with their extras."""

    values: tuple[float, float, float, float]
    score: float | None = None
    point: tuple[float, float] | None = None


# -- public entry points ---------------------------------------------------------


def parse_boxes(text: str, coords: str = "norm1000", size: Size | None = None) -> list[Box]:
    """The valid boxes in a reply, in order; ``[]`` when there are none.

    ``coords`` is a convention of :data:`cropper.core.boxes.COORDS`; ``pixel`` needs
    ``size`` ``(w, h)``, the image as the model saw it. Never raises on model
    output; raises :class:`ConfigError` for a bad ``coords`` or ``size``.
    """
    return list(parse_reply(text, coords, size).boxes)


def parse_reply(text: str, coords: str = "norm1000", size: Size | None = None) -> ParsedReply:
    """The valid boxes in a reply with their scores and subject points, or why none."""
    _check_convention(coords, size)
    if not isinstance(text, str):
        return _empty(f"reply is not text (got {type(text).__name__})")
    if not text.strip():
        return _empty("empty reply")
    if len(text) > MAX_CHARS:
        logger.debug("reply of %d characters: reading the first %d", len(text), MAX_CHARS)
        text = text[:MAX_CHARS]
    text = _answer_part(text)
    if not re.search(r"[0-9]", text):
        return _empty("no numbers found")
    try:
        groups = _read_groups(text)
        if not groups:
            return _empty("no box found (no group of 4 numbers)")
        return _sanitized(groups, coords, size)
    except Exception as exc:  # a parser bug must not break a crop: report it as no boxes
        logger.warning("could not read a reply (%s: %s)", type(exc).__name__, exc)
        return _empty(f"unreadable reply ({type(exc).__name__})")


# -- dialects --------------------------------------------------------------------


def _read_groups(text: str) -> list[_Group]:
    """Groups of numbers from the first dialect that yields any."""
    for reader in (_structured_groups, _tuple_groups, _bare_groups):
        groups = reader(text)
        if groups:
            return groups[:MAX_GROUPS]
    return []


def _answer_part(text: str) -> str:
    """The answer after a reasoning model's ``</think>``, if it wrote one after it."""
    _, sep, tail = text.rpartition("</think>")
    return tail if sep and tail.strip() else text


def _structured_groups(text: str) -> list[_Group]:
    """Groups from every JSON or Python-literal span of the text."""
    spans, tail = _spans(text)
    values = [_load(span) for span in spans]
    if tail is not None:
        values.append(_load_truncated(*tail))
    values = [v for v in values if v is not _FAIL]
    groups: list[_Group] = []
    for value in values:
        _walk(value, groups, 0, strings=False)
    if not groups:  # crops written as strings, e.g. {"crops": ["(4.3, 120, 80, 900, 760)"]}
        for value in values:
            _walk(value, groups, 0, strings=True)
    return groups


_NUM = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
_SEP = r"(?:\s*[,;]\s*|\s+)"
_POINT = rf"[(\[]\s*{_NUM}{_SEP}{_NUM}\s*[)\]]"
# Every alternative is anchored on a bracket and its pieces cannot split one number
# two ways, so a failed match backtracks at most over the text up to the next bracket.
_TUPLE_RE = re.compile(
    rf"(?P<subject>[(\[]\s*{_POINT}(?:{_SEP}{_NUM}){{4}}\s*[)\]])"
    rf"|(?P<corners><\|box_start\|>\s*{_POINT}\s*,?\s*{_POINT}\s*<\|box_end\|>)"
    rf"|(?P<plain>[(\[]\s*{_NUM}(?:{_SEP}{_NUM}){{3,4}}\s*[)\]])"
)
_NUM_RE = re.compile(_NUM)
_FULL_NUM_RE = re.compile(rf"\s*{_NUM}\s*")
# Maximal runs of at least four; a run starts only where no word or number goes on,
# so a long run of digits is tried once, in linear time.
_BARE_RE = re.compile(rf"(?<![\w.]){_NUM}(?:\s*,\s*{_NUM}){{3,}}")


def _tuple_groups(text: str) -> list[_Group]:
    """The paper's tuples and Qwen2-VL's box tokens, in order."""
    groups = []
    for match in _TUPLE_RE.finditer(text):
        nums = [_to_float(n) for n in _NUM_RE.findall(match.group())]
        if match.lastgroup == "subject":
            groups.append(_Group(tuple(nums[2:]), point=(nums[0], nums[1])))
        else:
            groups.append(_from_numbers(nums))
        if len(groups) >= MAX_GROUPS:
            break
    return groups


def _bare_groups(text: str) -> list[_Group]:
    """Runs of exactly four or five comma-separated numbers in prose."""
    groups = []
    for match in _BARE_RE.finditer(text):
        if match.group().count(",") <= 4 and not _maybe_cut(text, match):
            groups.append(_from_numbers([_to_float(n) for n in _NUM_RE.findall(match.group())]))
            if len(groups) >= MAX_GROUPS:
                break
    return groups


_BRACKET_RE = re.compile(r"[(\[{)\]}]")
_REST_RE = re.compile(r"[\s,;]*\Z")


def _maybe_cut(text: str, match: re.Match[str]) -> bool:
    """Whether a run may be the inside of a box the token limit cut, its last number short.

    So it is when it follows an opening bracket (a closed one was a tuple, read
    before), or when it ends the reply inside a bracket, as in the subject format
    ``((cx, cy), x1, y1, x2, y2`` cut before its last digit.
    """
    before = text[max(0, match.start() - 8) : match.start()].rstrip()
    if before.endswith(("[", "(")):
        return True
    if not _REST_RE.match(text, match.end()):
        return False
    depth = 0  # of the brackets still open where the run starts; a stray closer opens none
    for bracket in _BRACKET_RE.findall(text, 0, match.start()):
        depth = depth + 1 if bracket in "([{" else max(depth - 1, 0)
    return depth > 0


def _from_numbers(nums: list[float]) -> _Group:
    """Four numbers are a box; five are a leading score and a box."""
    if len(nums) == 5:
        return _Group(tuple(nums[1:]), score=nums[0])
    return _Group(tuple(nums))


# -- structured values: spans, loading, repair, walking ------------------------------

_SPECIAL_RE = re.compile(r"[\[\]{}\"'\\]")
_CLOSER = {"[": "]", "{": "}"}


def _spans(text: str) -> tuple[list[str], tuple[str, list[tuple[int, str]]] | None]:
    """Top-level ``[...]``/``{...}`` spans, and an unclosed last one with its cut points.

    A cut point is where an inner element has just closed, with the closers that
    would end the span there. Quotes count only inside a span, so an apostrophe
    in prose opens nothing.
    """
    spans: list[str] = []
    stack: list[str] = []
    cuts: deque[tuple[int, str]] = deque(maxlen=MAX_CUTS)
    start, quote, skip_to = 0, "", -1
    for match in _SPECIAL_RE.finditer(text):
        i, ch = match.start(), match.group()
        if i < skip_to:
            continue
        if quote:
            if ch == "\\":
                skip_to = i + 2  # the escaped character
            elif ch == quote:
                quote = ""
        elif ch in _CLOSER:
            if not stack:
                start = i
                cuts.clear()
            stack.append(_CLOSER[ch])
        elif not stack:
            continue
        elif ch in "\"'":
            quote = ch
        elif ch in "]}":
            if ch != stack[-1]:  # mismatched: not a literal, start afresh
                stack.clear()
                continue
            stack.pop()
            if not stack:
                spans.append(text[start : i + 1])
                if len(spans) >= MAX_SPANS:
                    return spans, None
            elif len(stack) <= MAX_DEPTH:
                cuts.append((i + 1 - start, "".join(reversed(stack))))
    tail = (text[start:], list(cuts)) if stack else None
    return spans, tail


def _load(span: str) -> Any:
    """The value of a JSON or Python-literal span, or ``_FAIL``."""
    try:
        return json.loads(span)
    except Exception:
        pass
    repaired = _repair_json(span)
    try:
        return json.loads(repaired)
    except Exception:
        pass
    if len(span) <= MAX_LITERAL_CHARS:
        pythonic = re.sub(r"\bnull\b", "None", span)
        pythonic = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", pythonic))
        try:
            return ast.literal_eval(pythonic)
        except Exception:  # SyntaxError, ValueError, RecursionError, MemoryError...
            pass
    return _FAIL


def _repair_json(span: str) -> str:
    """Drop trailing commas and quote bare keys, the slips models make most."""
    span = re.sub(r",\s*([\]}])", r"\1", span)
    return re.sub(r"([{,]\s*)([A-Za-z_][A-Za-z0-9_]*)\s*:", r'\1"\2":', span)


def _load_truncated(span: str, cuts: list[tuple[int, str]]) -> Any:
    """A span cut off mid-way, closed after its last complete element that loads."""
    for end, closers in reversed(cuts):
        obj = _load(span[:end] + closers)
        if obj is not _FAIL:
            return obj
    return _FAIL


_BOX_KEYS = ("bbox_2d", "bbox", "box_2d", "box", "crop", "rect", "coordinates")
_CORNER_KEYS = (
    ("x0", "y0", "x1", "y1"),
    ("x1", "y1", "x2", "y2"),
    ("left", "top", "right", "bottom"),
    ("left", "upper", "right", "lower"),
    ("xmin", "ymin", "xmax", "ymax"),
)
_SIZE_KEYS = (("x", "y", "w", "h"), ("x", "y", "width", "height"))
_SCORE_KEYS = ("score", "mos", "s")
_POINT_KEYS = ("point", "point_2d", "subject", "center", "centre")


def _walk(obj: Any, out: list[_Group], depth: int, strings: bool) -> None:
    """Append the groups in a loaded value, depth first, in the reply's order.

    Strings are read (as tuples) only when ``strings``: a first pass skips them so
    that a reasoning field quoting a box does not add one.
    """
    if len(out) >= MAX_GROUPS or depth > MAX_DEPTH:
        return
    if isinstance(obj, str):
        if strings:
            out.extend(_tuple_groups(obj)[: MAX_GROUPS - len(out)])
        return
    if isinstance(obj, dict):
        group = _group_from_dict(obj)
        children: Iterable[Any] = obj.values()
    elif isinstance(obj, (list, tuple)):
        group = _group_from_seq(obj)
        children = obj
    else:
        return
    if group is not None:
        out.append(group)
        return
    for child in children:
        _walk(child, out, depth + 1, strings)


def _group_from_seq(seq: list | tuple) -> _Group | None:
    """A box written as a sequence, in any of the shapes the module docstring lists.

    ``[x1, y1, x2, y2]``, ``[s, x1, y1, x2, y2]``, ``[[cx, cy], x1, y1, x2, y2]``,
    ``[[cx, cy], [x1, y1, x2, y2]]`` or corner pairs ``[[x1, y1], [x2, y2]]``.
    """
    if len(seq) not in (2, 4, 5):
        return None
    if len(seq) == 2:  # corner pairs, or a subject point and its box
        first, second = _pair(seq[0]), _pair(seq[1])
        if first and second:
            return _Group(first + second)
        # only a flat box of four is read inside: no recursion down a deep [[1, 2], [...]]
        flat = first and isinstance(seq[1], (list, tuple)) and len(seq[1]) == 4
        box = _group_from_seq(seq[1]) if flat else None
        return _Group(box.values, point=first) if box else None
    nums = [_number(v) for v in seq]
    if all(n is not None for n in nums):
        return _from_numbers(nums)
    point = _pair(seq[0])
    if len(seq) == 5 and point is not None and all(n is not None for n in nums[1:]):
        return _Group(tuple(nums[1:]), point=point)
    return None


def _group_from_dict(obj: dict, depth: int = 0) -> _Group | None:
    """An object naming its box by a key (``bbox_2d``, ``box``...) or by its corners."""
    if depth > MAX_DEPTH:  # {"box": {"box": ...}} thousands deep: json loads it on 3.13
        return None
    keyed = {str(k).strip().lower(): v for k, v in obj.items()}
    found = None
    for key in _BOX_KEYS:
        inner = keyed.get(key)
        if isinstance(inner, dict):
            found = _group_from_dict(inner, depth + 1)
        elif isinstance(inner, (list, tuple)):
            found = _group_from_seq(inner)
        if found is not None:
            break
    if found is None:
        corners = _corner_values(keyed)
        found = _Group(corners) if corners is not None else None
    if found is None:
        return None
    score = next((_number(keyed[k]) for k in _SCORE_KEYS if k in keyed), found.score)
    point = next((_pair(keyed[k]) for k in _POINT_KEYS if k in keyed), found.point)
    return _Group(found.values, score=score, point=point)


def _corner_values(keyed: dict[str, Any]) -> tuple[float, float, float, float] | None:
    for names in _CORNER_KEYS:
        nums = [_number(keyed.get(n)) for n in names]
        if all(n is not None for n in nums):
            return tuple(nums)
    for names in _SIZE_KEYS:
        nums = [_number(keyed.get(n)) for n in names]
        if all(n is not None for n in nums):
            x, y, w, h = nums
            return x, y, x + w, y + h
    return None


def _pair(value: Any) -> tuple[float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        x, y = _number(value[0]), _number(value[1])
        if x is not None and y is not None:
            return x, y
    return None


def _number(value: Any) -> float | None:
    """A number, or a string holding only one; never a bool."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return _to_float(value)
    if isinstance(value, str) and len(value) < 64 and _FULL_NUM_RE.fullmatch(value):
        return _to_float(value)
    return None


def _to_float(value: Any) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond float range
        return math.inf if value > 0 else -math.inf
    except (TypeError, ValueError):
        return math.nan


# -- sanitising ------------------------------------------------------------------


def _sanitized(groups: list[_Group], coords: str, size: Size | None) -> ParsedReply:
    """Valid, deduplicated boxes with their scores and points, or why none survived."""
    kept: list[tuple[np.ndarray, _Group]] = []
    dropped: Counter[str] = Counter()
    units = to_unit(np.array([g.values for g in groups], dtype=np.float64), coords, size)
    for row, group in zip(units, groups, strict=True):
        verdict = _verdict(row)
        if verdict:
            dropped[verdict] += 1
            continue
        clean = sanitize(row)
        if len(clean) == 0:
            dropped["degenerate"] += 1
            continue
        kept.append((clean[0], group))
    if not kept:
        return _empty(_why_none(dropped), tuple(dropped.elements()))
    unique = dedupe(np.array([row for row, _ in kept]))
    dropped["repeated another crop"] += len(kept) - len(unique)
    boxes, scores, points = [], [], []
    rows = iter(kept)
    for target in unique:  # dedupe keeps rows in order: walk to each survivor
        row, group = next((r, g) for r, g in rows if np.array_equal(r, target))
        boxes.append(Box(*(float(v) for v in row)))
        scores.append(_finite_or_none(group.score))
        points.append(_unit_point(group.point, coords, size))
    return ParsedReply(tuple(boxes), tuple(scores), tuple(points), "", tuple(dropped.elements()))


def _verdict(row: np.ndarray) -> str:
    """Why a unit xyxy row cannot be clamped into a box, or ``""``."""
    if not np.isfinite(row).all():
        return "non-finite"
    x0, x1 = sorted((row[0], row[2]))
    y0, y1 = sorted((row[1], row[3]))
    if x1 <= 0 or y1 <= 0 or x0 >= 1 or y0 >= 1:
        return "outside the image"
    if min(x0, y0) < -ABSURD_MARGIN or max(x1, y1) > 1 + ABSURD_MARGIN:
        return "far outside the image (wrong coordinate convention?)"
    return ""


def _why_none(dropped: Counter[str]) -> str:
    if len(dropped) == 1:
        (cause,) = dropped
        return f"all boxes {cause}"
    parts = ", ".join(f"{n} {cause}" for cause, n in dropped.most_common())
    return f"no valid box ({parts})"


def _unit_point(
    point: tuple[float, float] | None, coords: str, size: Size | None
) -> tuple[float, float] | None:
    if point is None:
        return None
    x, y = to_unit(np.array([point[0], point[1], point[0], point[1]]), coords, size)[0][:2]
    if not (math.isfinite(x) and math.isfinite(y)):
        return None
    return min(max(float(x), 0.0), 1.0), min(max(float(y), 0.0), 1.0)


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _empty(reason: str, dropped: tuple[str, ...] = ()) -> ParsedReply:
    return ParsedReply((), (), (), reason, dropped)


def _check_convention(coords: str, size: Size | None) -> None:
    """Raise for a caller's mistake: an unknown convention or a bad image size."""
    check_coords(coords)
    if coords == "pixel" and size is None:
        raise ConfigError("pixel coordinates need the image size: pass size=(w, h)")
    if size is not None:
        ok = isinstance(size, (tuple, list)) and len(size) == 2
        ok = ok and all(isinstance(v, (int, np.integer)) and v > 0 for v in size)
        if not ok:
            raise ConfigError(f"size must be (w, h), two positive ints, got {size!r}")
