"""The base VLM's defaults: what a backend that implements only ``generate`` gets."""

from __future__ import annotations

import pytest

from cropper.core.errors import ConfigError, VLMError
from cropper.core.messages import Message, TextPart
from cropper.vlm.base import VLM, Sampling


def conversation(text: str) -> list[Message]:
    return [Message("user", (TextPart(text),))]


class Echo(VLM):
    """Replies with each conversation's text; fails those named ``bad``, alone or not."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int | None]] = []

    def generate(self, conversations, sampling):
        texts = [c[0].parts[0].text for c in conversations]
        self.calls.append((texts, sampling.seed))
        if "bad" in texts:
            raise VLMError("the processor refuses this image")
        return [[t] * sampling.n for t in texts]


def test_the_defaults_say_one_call_at_a_time_and_no_bound_of_its_own():
    vlm = Echo()
    assert vlm.max_in_flight is None and vlm.overlaps_calls is False


def test_without_concurrency_the_conversations_go_in_one_call():
    vlm = Echo()
    answers = vlm.generate_each([conversation(str(i)) for i in range(5)], Sampling(seed=4))
    assert answers == [[str(i)] for i in range(5)]
    assert vlm.calls == [(["0", "1", "2", "3", "4"], 4)]


def test_a_calls_concurrency_is_its_batch_size_each_batch_with_a_seed_of_its_own():
    vlm = Echo()
    answers = vlm.generate_each(
        [conversation(str(i)) for i in range(5)], Sampling(seed=4), concurrency=2
    )
    assert answers == [[str(i)] for i in range(5)]
    assert vlm.calls == [(["0", "1"], 4), (["2", "3"], 6), (["4"], 8)]


def test_a_conversation_that_fails_alone_fails_alone_within_its_batch():
    vlm = Echo()
    texts = ["a", "bad", "c", "d"]
    answers = vlm.generate_each([conversation(t) for t in texts], Sampling(), concurrency=2)
    assert answers[0] == ["a"] and isinstance(answers[1], VLMError)
    assert answers[2:] == [["c"], ["d"]]
    # The failed batch is asked again one by one; the other batch is not.
    assert [c[0] for c in vlm.calls] == [["a", "bad"], ["a"], ["bad"], ["c", "d"]]


@pytest.mark.parametrize("concurrency", [0, -3, True, 1.5, "4"])
def test_a_concurrency_that_is_not_a_whole_number_above_zero_is_refused(concurrency):
    vlm = Echo()
    with pytest.raises(ConfigError, match="concurrency must be a whole number >= 1"):
        vlm.generate_each([conversation("a")], Sampling(), concurrency=concurrency)
    assert vlm.calls == []
