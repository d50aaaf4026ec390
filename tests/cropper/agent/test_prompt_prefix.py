"""Everything before the candidate crops is the same in every round of a photo's loop.

vLLM's prefix cache (and any KV cache keyed by tokens) then serves the exemplars and
the query from the first round's work: only the candidates are new in a refine round.
"""

from __future__ import annotations

import pytest
from PIL import Image

from cropper.agent.prompts import PromptPhoto, PromptSet
from cropper.core.boxes import Box
from cropper.core.messages import Conversation, ImagePart, TextPart
from cropper.core.tasks import Ratio, Subject

TASKS = ["free", "subject", "aspect"]
COORDS = ["norm1000", "pixel", "norm1", "rel1000"]


class Crop:
    def __init__(self, box, score=None, subject=None):
        self.box, self.score, self.subject = box, score, subject


class Exemplar:
    def __init__(self, i):
        size = (448, 299) if i % 2 else (299, 448)
        self.photo = PromptPhoto(Image.new("RGB", size, (i * 20, 90, 140)), key=f"ex{i}.jpg@448")
        self.crops = [
            Crop(Box(0.1, 0.05 * i, 0.8, 0.6 + 0.05 * i), 4.5 - 0.25 * i, (0.4, 0.5)),
            Crop(Box(0.0, 0.1, 0.5, 0.9), 3.75, None),
        ]
        self.similarity = 0.9 - 0.1 * i


def candidates(round_: int) -> list[dict]:
    """The previous round's crops as Cropper._feedback hands them to the refine prompt."""
    return [
        {
            "photo": PromptPhoto(Image.new("RGB", (224, 150 + 10 * j + round_), (round_, j, 0))),
            "box": Box(0.05 * j, 0.1, 0.6 + 0.05 * j + 0.01 * round_, 0.9),
            "score": 0.8 - 0.05 * j + 0.02 * round_,
            "round": round_,
        }
        for j in range(6)
    ]


def rounds(task: str, coords: str) -> list[Conversation]:
    """The propose prompt and the refine prompts of rounds 1 and 2, as the loop renders them."""
    prompts = PromptSet()
    fixed = dict(  # built once per photo in the loop, and reused by every round
        query=PromptPhoto(Image.new("RGB", (1036, 672), (10, 200, 30)), key="query.jpg"),
        exemplars=[Exemplar(i) for i in range(4)],
        subject=Subject((0.5, 0.4), Box(0.4, 0.3, 0.6, 0.5), "the kite", "text"),
        ratio=Ratio(4 / 5, "4:5"),
        n_crops=6,
    )
    out = [prompts.render(task, "propose", coords=coords, candidates=[], **fixed)]
    for k in (1, 2):
        out.append(prompts.render(task, "refine", coords=coords, candidates=candidates(k), **fixed))
    return out


def stream(conversation: Conversation) -> list:
    """The prompt as the model reads it: role marks, text characters, and images by identity."""
    items: list = []
    for message in conversation:
        items.append(("role", message.role))
        for part in message.parts:
            if isinstance(part, TextPart):
                items.extend(part.text)
            else:
                items.append(("image", id(part.image)))
    return items


def common_prefix(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def parts_before_candidates(conversation: Conversation, candidate_ids: set[int]) -> list:
    """Every message's parts up to the first candidate crop (images compared by identity)."""
    out: list = []
    for message in conversation:
        for part in message.parts:
            if isinstance(part, ImagePart) and id(part.image) in candidate_ids:
                return out
            out.append((message.role, part.text if isinstance(part, TextPart) else id(part.image)))
    raise AssertionError("no candidate crop in the refine prompt")


@pytest.mark.parametrize("coords", COORDS)
@pytest.mark.parametrize("task", TASKS)
def test_everything_before_the_candidates_is_identical_across_rounds(task, coords):
    propose, refine1, refine2 = rounds(task, coords)
    ids1 = {id(p.image) for m in refine1 for p in m.parts if isinstance(p, ImagePart)}
    ids2 = {id(p.image) for m in refine2 for p in m.parts if isinstance(p, ImagePart)}
    before1 = parts_before_candidates(refine1, ids1 - ids2)
    before2 = parts_before_candidates(refine2, ids2 - ids1)
    assert before1 == before2
    # The exemplars and the query are all in that shared part.
    shared_images = [v for _, v in before1 if isinstance(v, int)]
    assert len(shared_images) == 4 + 1
    # The rounds do differ after it: the candidates are new each round.
    assert stream(refine1) != stream(refine2)


@pytest.mark.parametrize("coords", COORDS)
@pytest.mark.parametrize("task", TASKS)
def test_the_propose_prompt_up_to_its_answer_rules_prefixes_every_refine_prompt(task, coords):
    propose, refine1, refine2 = rounds(task, coords)
    first = stream(propose)
    # The answer rules close every prompt, after the feedback block: all before is shared.
    tail = "".join(c for c in first if isinstance(c, str)).rindex("Answer with JSON only")
    chars = [i for i, c in enumerate(first) if isinstance(c, str)]
    stable = chars[tail]  # where the answer rules start in the propose prompt's stream
    images_in_propose = sum(1 for c in first if isinstance(c, tuple) and c[0] == "image")
    for refine in (refine1, refine2):
        shared = common_prefix(first, stream(refine))
        near = "".join(c for c in first[max(0, shared - 40) : shared + 40] if isinstance(c, str))
        assert shared >= stable, (
            f"{task}/{coords}: the refine prompt departs from the propose prompt at item "
            f"{shared}, before its answer rules (item {stable}): {near!r}"
        )
        # Every image of the propose prompt sits in the shared prefix.
        assert sum(1 for c in first[:shared] if isinstance(c, tuple) and c[0] == "image") == (
            images_in_propose
        )
    # Round 2 shares with round 1 at least the propose prefix plus the feedback's header.
    assert common_prefix(stream(refine1), stream(refine2)) > stable
