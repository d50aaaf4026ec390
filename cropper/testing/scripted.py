"""A VLM that replies from a script, for testing the loop's logic without a model.

It stands in only for the model's replies; every other part of the loop is the real one.
Backends are tested against real tiny models and a real server.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from cropper.core.messages import Conversation
from cropper.vlm.base import VLM, Sampling


class ScriptedVLM(VLM):
    """Replies from a script: a list of reply batches, or a function of the call."""

    name = "scripted"

    def __init__(
        self, script: Sequence[Sequence[str]] | Callable[[Conversation, Sampling], list[str]]
    ):
        self.script = script
        self.calls: list[tuple[Conversation, Sampling]] = []

    def generate(self, conversations, sampling):
        out = []
        for conversation in conversations:
            self.calls.append((conversation, sampling))
            if callable(self.script):
                out.append(self.script(conversation, sampling))
            else:
                out.append(list(self.script[len(self.calls) - 1]))
        return out


def crops_reply(*boxes: Sequence[float]) -> str:
    """A reply proposing ``boxes``, as the boxes schema asks for."""
    return json.dumps({"crops": [list(b) for b in boxes]})
