"""The reply parser: tables of what real VLMs write, and properties on garbage.

Every box is read as ``x1, y1, x2, y2``; no row guesses ``yxyx``.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cropper.agent.parsing import MAX_CHARS, ParsedReply, parse_boxes, parse_reply
from cropper.core.boxes import Box
from cropper.core.errors import ConfigError

# Expected boxes are normalized xyxy; in norm1000 "(120, 80, 900, 760)" is A.
A = (0.12, 0.08, 0.90, 0.76)
B = (0.05, 0.04, 0.95, 0.80)
QWEN25_A = (135 / 1092, 114 / 728, 1016 / 1092, 672 / 728)
QWEN25_B = (0, 48 / 728, 1, 700 / 728)

QWEN25_PIXEL = """```json
[
\t{"bbox_2d": [135, 114, 1016, 672], "label": "crop 1"},
\t{"bbox_2d": [0, 48, 1092, 700], "label": "crop 2"}
]
```"""

QWEN3_NORM = """```json
[
\t{"bbox_2d": [120, 80, 900, 760], "label": "aesthetic crop"},
\t{"bbox_2d": [50, 40, 950, 800], "label": "wider crop"}
]
```"""

QWEN3_THINKING = """<think>
The horizon sits low; a first idea is [0, 0, 500, 500] but that cuts the boat.
</think>

```json
[{"bbox_2d": [120, 80, 900, 760], "label": "crop"}]
```"""

GEMINI_OUR_SCHEMA = """```json
{
  "crops": [
    [120, 80, 900, 760],
    [50, 40, 950, 800]
  ]
}
```"""

GPT4O_NUMBERED = """Here are six crops that would score highest:

1. (4.6, 120, 80, 900, 760)
2. (4.4, 50, 40, 950, 800)

These keep the subject on a third."""

GPT4O_BOLD = """**Crop 1:** [120, 80, 900, 760] – tight on the subject
**Crop 2:** [50, 40, 950, 800] – more context"""

GPT4O_PLAIN_FENCE = """Sure! Based on the exemplars, I propose:

```
(4.52, 120, 80, 900, 760)
(4.40, 50, 40, 950, 800)
```"""


def row(name, reply, expected, coords="norm1000", size=None):
    return pytest.param(reply, coords, size, expected, id=name)


J = '{"crops": [[120, 80, 900, 760], [50, 40, 950, 800]]}'  # our constrained schema
SUBJECT = (0.1, 0.2, 0.8, 0.9)

CASES = [
    # -- JSON: our constrained schema and what models write unconstrained --
    row("schema", J, [A, B]),
    row("gemini-fenced-schema", GEMINI_OUR_SCHEMA, [A, B]),
    row("qwen3-bbox_2d-fenced", QWEN3_NORM, [A, B]),
    row("qwen25-bbox_2d-pixels", QWEN25_PIXEL, [QWEN25_A, QWEN25_B], "pixel", (1092, 728)),
    row("qwen3-thinking-answer-only", QWEN3_THINKING, [A]),
    row("single-object", '{"bbox_2d": [120, 80, 900, 760], "label": "cat"}', [A]),
    row("ground-schema", '{"box": [120, 80, 900, 760]}', [A]),
    row("bare-arrays", "[[120, 80, 900, 760], [50, 40, 950, 800]]", [A, B]),
    row("one-bare-array", "[120, 80, 900, 760]", [A]),
    row(
        "bbox-and-crop-keys",
        '[{"bbox": [120, 80, 900, 760]}, {"crop": [50, 40, 950, 800]}]',
        [A, B],
    ),
    row("x1y1x2y2-keys", '[{"x1": 120, "y1": 80, "x2": 900, "y2": 760}]', [A]),
    row("x0y0x1y1-keys", '[{"x0": 120, "y0": 80, "x1": 900, "y1": 760}]', [A]),
    row("ltrb-keys", '{"left": 120, "top": 80, "right": 900, "bottom": 760}', [A]),
    row("pil-keys", '{"left": 120, "upper": 80, "right": 900, "lower": 760}', [A]),
    row("minmax-keys", '{"xmin": 120, "ymin": 80, "xmax": 900, "ymax": 760}', [A]),
    row("xywh-keys", '{"x": 120, "y": 80, "width": 780, "height": 680}', [A]),
    row("string-numbers", '{"crops": [{"Box": ["120", "80", "900", "760"]}]}', [A]),
    row("corner-pairs", "[[[120, 80], [900, 760]]]", [A]),
    row("tuple-inside-json-string", '{"crops": ["(120, 80, 900, 760)"]}', [A]),
    row(
        "reasoning-string-not-a-crop",
        '{"why": "(0, 0, 500, 500) cuts", "crops": [[120, 80, 900, 760]]}',
        [A],
    ),
    # Gemini's native box_2d is yxyx; we ask for xyxy and read xyxy, never guessing.
    row(
        "gemini-box_2d-read-as-xyxy", '[{"box_2d": [80, 120, 760, 900]}]', [(0.08, 0.12, 0.76, 0.9)]
    ),
    # -- repairs --
    row("single-quotes", J.replace('"', "'"), [A, B]),
    row("trailing-commas", '{"crops": [[120, 80, 900, 760], [50, 40, 950, 800],],}', [A, B]),
    row("unquoted-key", "{crops: [[120, 80, 900, 760]]}", [A]),
    row("unquoted-corner-keys", "[{x1: 120, y1: 80, x2: 900, y2: 760,}]", [A]),
    row(
        "python-quotes-json-literals",
        "[{'bbox_2d': [120, 80, 900, 760], 'n': null, 'ok': true}]",
        [A],
    ),
    row("python-tuples", "[(120, 80, 900, 760), (50, 40, 950, 800)]", [A, B]),
    row("truncated-mid-box", J[:-8], [A]),
    row("truncated-after-box", J[:-2] + ", [", [A, B]),
    row("truncated-qwen-mid-object", QWEN3_NORM[:70], [A]),
    row("truncated-keyed-objects", '[{"x1": 120, "y1": 80, "x2": 900, "y2": 760}, {"x1": 5', [A]),
    row("truncated-mid-label", '[{"bbox_2d": [120, 80, 900, 760], "label": "the dog\'s he', [A]),
    row("fence-then-prose", f"```json\n{J}\n```\nHope this helps!", [A, B]),
    row("apostrophe-in-prose", f"It's the best: {J}", [A, B]),
    # -- the paper's tuples --
    row("paper-free-form-numbered", GPT4O_NUMBERED, [A, B]),
    row("paper-free-form-fenced", GPT4O_PLAIN_FENCE, [A, B]),
    row("crop-n-bold", GPT4O_BOLD, [A, B]),
    row("comma-separated-5-tuples", "(4.3, 120, 80, 900, 760), (4.1, 50, 40, 950, 800)", [A, B]),
    row("crop-n-colon", "Crop 1: (120, 80, 900, 760)\nCrop 2: (50, 40, 950, 800)", [A, B]),
    row("numbered-paren", "1) (120, 80, 900, 760)", [A]),
    row("paper-subject", "((0.52, 0.48), 0.1, 0.2, 0.8, 0.9)", [SUBJECT], "norm1"),
    row("subject-json", "[[0.5, 0.4], 0.1, 0.2, 0.8, 0.9]", [SUBJECT], "norm1"),
    row("paper-aspect-pixels", "(0, 96, 1024, 672)", [(0, 0.125, 1, 0.875)], "pixel", (1024, 768)),
    row("rel1000", "(1, 1, 1000, 1000)", [(0.001, 0.001, 1, 1)], "rel1000"),
    row("norm1-floats", "(0.12, 0.08, 0.9, 0.76)", [A], "norm1"),
    row("space-separated", "[120 80 900 760]", [A]),
    row("semicolons", "(120; 80; 900; 760)", [A]),
    row(
        "qwen2-box-tokens",
        "<|object_ref_start|>crop<|object_ref_end|><|box_start|>(120,80),(900,760)<|box_end|>",
        [A],
    ),
    # -- prose --
    row("bare-numbers-in-prose", "I would crop to 120, 80, 900, 760 to keep the subject.", [A]),
    row("bare-numbers-after-names", "x1, y1, x2, y2 = 120, 80, 900, 760", [A]),
    row("numbers-in-prose-ignored", "The photo has 3 people. Crop: (120, 80, 900, 760).", [A]),
    # -- sanitising --
    row("inverted-corners", "(900, 760, 120, 80)", [A]),
    row("clamped-overshoot", "(-20, 80, 1030, 760)", [(0, 0.08, 1, 0.76)]),
    row("exponent", "(0, 0, 1e3, 1e3)", [(0, 0, 1, 1)]),
    row("number-spellings", "(+120, 80., 900.0, .76e3)", [A]),
    row("near-duplicates", "(120, 80, 900, 760) (121, 80, 900, 761)", [A]),
    row("degenerate-dropped", "(120, 80, 900, 760) (120, 80, 120, 760)", [A]),
    row("outside-dropped", "(120, 80, 900, 760) (1200, 80, 1900, 760)", [A]),
    row("absurd-dropped", "(120, 80, 900, 760) (100, 80, 5000, 760)", [A]),
    row("absurd-left-dropped", "(120, 80, 900, 760) (-4000, 80, 500, 760)", [A]),
    row("non-finite-dropped", "[[NaN, 8, 9, 76], [Infinity, 8, 9, 76], [120, 80, 900, 760]]", [A]),
]


def _close(actual: Box, expected: tuple[float, ...]) -> bool:
    return all(
        math.isclose(a, e, abs_tol=1e-6) for a, e in zip(actual.as_array(), expected, strict=True)
    )


@pytest.mark.parametrize(
    ("reply", "coords", "size", "expected"),
    CASES,
)
def test_reads_real_replies(reply, coords, size, expected):
    parsed = parse_reply(reply, coords, size)
    assert len(parsed.boxes) == len(expected), parsed
    assert all(_close(b, e) for b, e in zip(parsed.boxes, expected, strict=True)), parsed
    assert parsed.reason == ""
    assert len(parsed.scores) == len(parsed.points) == len(parsed.boxes)
    assert parse_boxes(reply, coords, size) == list(parsed.boxes)


@pytest.mark.parametrize(
    ("reply", "coords", "size", "scores", "points"),
    [
        pytest.param(GPT4O_NUMBERED, "norm1000", None, (4.6, 4.4), (None, None), id="free-form"),
        pytest.param(A.__repr__(), "norm1", None, (None,), (None,), id="plain-4-tuple"),
        pytest.param(
            "[(0.73, 120, 80, 900, 760), (120, 80, 900, 700)]",
            "norm1000",
            None,
            (0.73, None),
            (None, None),
            id="mixed-refine-echo",
        ),
        pytest.param(
            '[{"bbox": [120, 80, 900, 760], "score": "4.2"}]',
            "norm1000",
            None,
            (4.2,),
            (None,),
            id="score-key",
        ),
        pytest.param(
            "[{'bbox': (120, 80, 900, 760), 'score': 4.2, 'label': None}]",
            "norm1000",
            None,
            (4.2,),
            (None,),
            id="python-dict-score",
        ),
        pytest.param(
            "((0.52, 0.48), 0.1, 0.2, 0.8, 0.9)",
            "norm1",
            None,
            (None,),
            ((0.52, 0.48),),
            id="subject-tuple",
        ),
        pytest.param(
            "[[500, 400], [100, 200, 800, 900]]",
            "norm1000",
            None,
            (None,),
            ((0.5, 0.4),),
            id="subject-point-box-pair",
        ),
        pytest.param(
            "[((512, 384), 0, 96, 1024, 672)]",
            "pixel",
            (1024, 768),
            (None,),
            ((0.5, 0.5),),
            id="subject-pixels",
        ),
        pytest.param(
            '{"box": [100, 200, 800, 900], "point": [1200, -5]}',
            "norm1000",
            None,
            (None,),
            ((1.0, 0.0),),
            id="point-clamped",
        ),
    ],
)
def test_scores_and_points_ride_along(reply, coords, size, scores, points):
    parsed = parse_reply(reply, coords, size)
    assert parsed.scores == pytest.approx(scores)
    assert len(parsed.points) == len(points)
    for got, want in zip(parsed.points, points, strict=True):
        assert got == (None if want is None else pytest.approx(want))


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        pytest.param("", "empty reply", id="empty"),
        pytest.param("  \n\t ", "empty reply", id="whitespace"),
        pytest.param("I cannot help with that request.", "no numbers found", id="refusal"),
        pytest.param("I'm sorry, but I can't crop this image.", "no numbers found", id="sorry"),
        pytest.param("I see 2 people and 1 dog.", "no box found", id="numbers-no-box"),
        pytest.param("(1, 2, 3)", "no box found", id="three-numbers"),
        pytest.param("(1, 2, 3, 4, 5, 6)", "no box found", id="six-numbers"),
        pytest.param('{"crops": [[120, 80, 9', "no box found", id="truncated-first-box"),
        pytest.param('{"crops": [[120, 80, 900, 76', "no box found", id="truncated-last-number"),
        pytest.param("(0.1, 0.2, 0.8, 0.9)", "all boxes degenerate", id="norm1-in-norm1000"),
        pytest.param("(120, 80, 120, 760)", "all boxes degenerate", id="zero-width"),
        pytest.param("(1200, 1100, 1500, 1400)", "all boxes outside the image", id="outside"),
        pytest.param("(100, 100, 5000, 900)", "all boxes far outside the image", id="absurd"),
        pytest.param("[[NaN, 1, 2, 3]]", "all boxes non-finite", id="nan"),
        pytest.param("(1, 1, 1, 1) (2000, 2000, 3000, 3000)", "no valid box (", id="mixed"),
        pytest.param("<think>(120, 80, 900, 760)", "", id="unclosed-think-read-whole"),
        pytest.param(None, "reply is not text (got NoneType)", id="none"),
        pytest.param(b"(120, 80, 900, 760)", "reply is not text (got bytes)", id="bytes"),
        pytest.param(["(120, 80, 900, 760)"], "reply is not text (got list)", id="list"),
    ],
)
def test_says_why_no_box(reply, reason):
    parsed = parse_reply(reply, "norm1000")
    assert parsed.reason.startswith(reason)
    assert (parsed.boxes == ()) == bool(reason)


@pytest.mark.parametrize(
    ("coords", "size", "fragment"),
    [
        pytest.param("pixels", None, "unknown coordinate convention 'pixels'", id="typo"),
        pytest.param("auto", None, "unknown coordinate convention 'auto'", id="auto"),
        pytest.param("pixel", None, "size=(w, h)", id="pixel-without-size"),
        pytest.param("pixel", (0, 10), "two positive ints", id="zero-width"),
        pytest.param("pixel", (10,), "two positive ints", id="one-number"),
        pytest.param("norm1000", "640x480", "two positive ints", id="string-size"),
    ],
)
def test_bad_convention_is_the_callers_error(coords, size, fragment):
    with pytest.raises(ConfigError) as info:
        parse_reply("(120, 80, 900, 760)", coords, size)
    assert fragment in str(info.value)
    with pytest.raises(ConfigError):  # even for a reply that is not text
        parse_boxes(None, coords, size)


def test_returns_frozen_result():
    parsed = parse_reply("(120, 80, 900, 760)")
    assert isinstance(parsed, ParsedReply)
    with pytest.raises(AttributeError):
        parsed.reason = "x"  # type: ignore[misc]


def test_runaway_reply_keeps_its_first_boxes():
    padding = "[" + "1, " * MAX_CHARS
    parsed = parse_reply('{"crops": [[120, 80, 900, 760]]}\n' + padding)
    assert [b.as_array().round(6).tolist() for b in parsed.boxes] == [list(A)]


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param("1" * 1_000_000, id="digits"),
        pytest.param("[" * 1_000_000, id="open-brackets"),
        pytest.param("(1" * 500_000, id="open-tuples"),
        pytest.param("[1," * 350_000, id="nested-lists"),
        pytest.param('{"a":' * 200_000, id="nested-objects"),
        pytest.param("1, " * 350_000, id="number-run"),
        pytest.param("(1 " + " " * 1_000_000, id="long-space"),
        pytest.param("[1]" * 350_000, id="many-spans"),
        pytest.param("(120, 80, 900, 760) " * 50_000, id="many-boxes"),
        pytest.param('["\\' * 350_000, id="escapes"),
        pytest.param("x1" * 500_000, id="words"),
    ],
)
def test_megabyte_replies_are_read_in_bounded_work(reply):
    # No timing assertion (speed lives in benchmarks/): quadratic backtracking here
    # would take minutes, so a regression shows as this test hanging.
    parsed = parse_reply(reply)
    _assert_valid(parsed)


# -- properties --------------------------------------------------------------------


def _assert_valid(parsed: ParsedReply) -> None:
    assert isinstance(parsed, ParsedReply)
    assert len(parsed.boxes) == len(parsed.scores) == len(parsed.points)
    assert (parsed.reason == "") == bool(parsed.boxes)
    for box in parsed.boxes:
        assert 0 <= box.x0 < box.x1 <= 1 and 0 <= box.y0 < box.y1 <= 1
    for point in parsed.points:
        assert point is None or all(0 <= v <= 1 for v in point)
    for score in parsed.scores:
        assert score is None or math.isfinite(score)


REPLY_PIECES = list("0123456789.,-+eE ()[]{}\"':;\n\\`xy_abn") + ["NaN", "bbox_2d", "crops"]


def reply_like(max_pieces: int) -> st.SearchStrategy[str]:
    """Text made of the characters and words that replies are made of."""
    return st.lists(st.sampled_from(REPLY_PIECES), max_size=max_pieces).map("".join)


VALID_REPLIES = [case.values[0] for case in CASES]


@st.composite
def mutated_replies(draw) -> str:
    """A real reply cut, spliced and sprinkled with reply-like characters."""
    text = draw(st.sampled_from(VALID_REPLIES))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 8)))
        insert = draw(reply_like(6))
        text = text[:i] + insert + text[j:]
    return text


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.text(max_size=300))
def test_never_raises_on_any_text(text):
    _assert_valid(parse_reply(text, "norm1000"))


@SETTINGS
@given(reply_like(200), st.sampled_from(["norm1", "norm1000", "pixel"]))
def test_never_raises_on_reply_like_text(text, coords):
    _assert_valid(parse_reply(text, coords, (37, 1001)))


@SETTINGS
@given(mutated_replies(), st.sampled_from(["norm1", "norm1000", "rel1000", "pixel"]))
def test_never_raises_on_mutated_replies(text, coords):
    _assert_valid(parse_reply(text, coords, (640, 427)))


@SETTINGS
@given(
    st.lists(
        st.tuples(*[st.floats(allow_nan=True, allow_infinity=True, width=32)] * 4),
        max_size=8,
    ),
    st.sampled_from(["json", "tuples", "objects"]),
)
def test_sanitises_any_numbers(rows, dialect):
    if dialect == "json":
        text = str([list(r) for r in rows]).replace("nan", "NaN").replace("inf", "Infinity")
    elif dialect == "tuples":
        text = "\n".join(f"({a!r}, {b!r}, {c!r}, {d!r})" for a, b, c, d in rows)
    else:
        text = str([dict(zip(("x1", "y1", "x2", "y2"), r, strict=True)) for r in rows])
    _assert_valid(parse_reply(text, "norm1000"))


def test_exported_lightly_from_the_package():
    import subprocess
    import sys

    import cropper

    assert cropper.parse_boxes is parse_boxes and cropper.parse_reply is parse_reply
    heavy = "{'torch', 'transformers', 'open_clip', 'faiss'}"
    code = f"import sys, cropper.agent.parsing; print(sorted({heavy} & sys.modules.keys()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
