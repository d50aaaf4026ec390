"""What the command-line tests share: a local OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import pytest

from cropper.testing.openai_server import OpenAICompatibleServer


@pytest.fixture
def server():
    with OpenAICompatibleServer() as srv:
        yield srv
