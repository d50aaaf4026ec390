"""Many photos' loops in lockstep: each round's model calls go out together, batched.

The loop is written once, as a generator that yields what it needs from the models
(:class:`Generate`, :class:`Embed`, :class:`Score`) and receives the answer. One photo
is driven by answering each request at once (:func:`drive_one`); many photos by
advancing every photo to its next request, then answering all the requests of a kind
with one call (:func:`drive_many`): one ``vlm.generate`` for every photo's round-k
prompts (in-process backends batch them, the server backend keeps them in flight
together), one embedder pass for every photo's crops. A batch's ``concurrency`` goes
with each model call; the backend's own settings are never changed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cropper.core.boxes import Box
from cropper.core.errors import CropperError, VLMError
from cropper.core.messages import Conversation
from cropper.scoring.scorer import input_side, scoring_crop
from cropper.vlm.base import Sampling


@dataclass(frozen=True)
class Generate:
    """Replies to ``prompt``: answered with ``sampling.n`` reply strings."""

    prompt: Conversation
    sampling: Sampling


@dataclass(frozen=True)
class Embed:
    """The embedding of a photo: answered with a vector."""

    photo: Any


@dataclass(frozen=True)
class Score:
    """Scores of ``boxes`` of ``photo`` for ``task``: answered with a list of scores."""

    photo: Any
    boxes: Sequence[Any]
    task: str
    embedding: np.ndarray | None


@dataclass(frozen=True)
class Together:
    """Requests of one photo's parallel loops (one a ratio): answered with a list of answers.

    They go out with every other photo's requests, so a photo's four ratios cost one model
    call a round, not four.
    """

    requests: tuple[Generate | Embed | Score, ...]


Request = Generate | Embed | Score | Together
Steps = Generator[Request, Any, Any]  # yields requests, receives answers, returns a result


def together(steps: Sequence[Steps]) -> Generator[Together, list[Any], list[Any]]:
    """Run several loops of one photo in lockstep; returns their results, in order.

    Each step yields one :class:`Together` of every loop's next request. A loop that
    raises ends them all (the others are closed) with its error.
    """
    results: list[Any] = [None] * len(steps)
    answers: dict[int, Any] = dict.fromkeys(range(len(steps)))
    try:
        while answers:
            waiting: dict[int, Request] = {}
            for i, answer in answers.items():
                try:
                    if isinstance(answer, BaseException):
                        waiting[i] = steps[i].throw(answer)
                    else:
                        waiting[i] = steps[i].send(answer)
                except StopIteration as done:
                    results[i] = done.value
            if not waiting:
                break
            keys = list(waiting)
            got = yield Together(tuple(waiting[k] for k in keys))
            answers = dict(zip(keys, got, strict=True))
    finally:
        for step in steps:
            step.close()
    return results


class Server:
    """Answers a list of requests with as few model calls as it can.

    ``concurrency`` goes with every VLM call (:meth:`~cropper.vlm.base.VLM.generate_each`):
    the conversations a call has at once, requests in flight on a server, a batch
    in-process; ``None``: the backend's own bound.
    """

    def __init__(self, vlm: Any, embedder: Any, scorer: Any, concurrency: int | None = None):
        self.vlm, self.embedder, self.scorer = vlm, embedder, scorer
        self.concurrency = concurrency

    def bounded(self, concurrency: int | None) -> Server:
        """A server like this one for a batch whose VLM calls have ``concurrency`` at once."""
        return Server(self.vlm, self.embedder, self.scorer, concurrency)

    def answer(self, requests: Sequence[Request]) -> list[Any]:
        """One answer per request, in order; an error is the answer of the requests it hit.

        The requests inside a :class:`Together` are answered with the others, and their
        answers come back as its list. A :class:`VLMError` that every request would meet
        (``stops_batch``) is raised.
        """
        flat: list[Request] = []
        spans: list[tuple[int, int] | None] = []
        for request in requests:
            if isinstance(request, Together):
                spans.append((len(flat), len(flat) + len(request.requests)))
                flat.extend(request.requests)
            else:
                spans.append(None)
                flat.append(request)
        answers = self._answer_flat(flat)
        return [
            answers[i] if span is None else answers[span[0] : span[1]]
            for i, span in zip(_positions(spans), spans, strict=True)
        ]

    def _answer_flat(self, requests: Sequence[Request]) -> list[Any]:
        answers: list[Any] = [None] * len(requests)
        for kind, call in ((Generate, self._generate), (Embed, self._embed), (Score, self._score)):
            positions = [i for i, r in enumerate(requests) if isinstance(r, kind)]
            for group in _alike(positions, requests):
                try:
                    results = call([requests[i] for i in group])
                except VLMError as exc:
                    if exc.stops_batch:
                        raise  # the server is gone, or refuses every photo alike
                    results = [exc] * len(group)
                except CropperError as exc:
                    results = [exc] * len(group)
                for i, result in zip(group, results, strict=True):
                    answers[i] = result
        return answers

    def _generate(self, requests: list[Generate]) -> list[list[str] | VLMError]:
        # A photo's own failure (an image its processor refuses) is its answer alone.
        return self.vlm.generate_each(
            [r.prompt for r in requests], requests[0].sampling, concurrency=self.concurrency
        )

    def _embed(self, requests: list[Embed]) -> list[np.ndarray]:
        # Each photo as the embedder takes it in, made cheaply (see scoring_crop).
        side = input_side(self.embedder)
        whole = Box.whole()
        return list(self.embedder.embed([scoring_crop(r.photo, whole, side) for r in requests]))

    def _score(self, requests: list[Score]) -> list[list[Any]]:
        return self.scorer.score_many([(r.photo, r.boxes, r.task, r.embedding) for r in requests])


def _positions(spans: list[tuple[int, int] | None]) -> list[int]:
    """Where each request's answer sits among the flattened ones (a Together: its start)."""
    out, at = [], 0
    for span in spans:
        out.append(at)
        at = span[1] if span is not None else at + 1
    return out


def _alike(positions: list[int], requests: Sequence[Request]) -> list[list[int]]:
    """Positions grouped so that one call serves each group: Generate needs equal sampling."""
    groups: list[list[int]] = []
    for i in positions:
        request = requests[i]
        for group in groups:
            first = requests[group[0]]
            if not isinstance(request, Generate) or request.sampling == first.sampling:  # type: ignore[union-attr]
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def drive_one(steps: Steps, server: Server) -> Any:
    """Run one photo's loop, answering each request as it comes; returns its result."""
    for _, result in drive_many({0: steps}, server):
        if isinstance(result, BaseException):
            raise result
        return result
    raise AssertionError("a loop ended without a result")  # drive_many yields every key


def drive_many(steps: dict[int, Steps], server: Server) -> Iterator[tuple[int, Any]]:
    """Run many photos' loops in lockstep; yields ``(key, result or CropperError)`` as each ends.

    A photo whose loop raises a :class:`CropperError` yields that error and the others go
    on; an unreachable server, or one that refuses every request alike (a
    :class:`VLMError` whose ``stops_batch``), stops them all.
    """
    waiting: dict[int, Request] = {}
    answers: dict[int, Any] = dict.fromkeys(steps)
    while answers:
        finished: list[tuple[int, Any]] = []
        for key, answer in answers.items():
            try:
                if isinstance(answer, BaseException):
                    waiting[key] = steps[key].throw(answer)
                else:
                    waiting[key] = steps[key].send(answer)
            except StopIteration as done:
                finished.append((key, done.value))
            except VLMError as exc:
                if exc.stops_batch:
                    raise
                finished.append((key, exc))
            except CropperError as exc:
                finished.append((key, exc))
        yield from finished
        if not waiting:
            return
        keys = list(waiting)
        results = server.answer([waiting[k] for k in keys])
        answers = dict(zip(keys, results, strict=True))
        waiting = {}


def pipelined(
    chunks: Iterable[Any], run: Callable[[Any], Iterable[Any]], lanes: int
) -> Iterator[Any]:
    """What ``run(chunk)`` yields for every chunk, ``lanes`` chunks at a time, in threads.

    Rounds move together within a chunk, so between two rounds the model would idle
    while the client parses, scores and builds the next prompts. A second chunk in
    flight keeps it busy meanwhile (for a backend whose calls overlap); the bound on
    requests in flight still holds, as the threads' calls share it. The first error
    stops the other lanes taking new chunks and is raised here.
    """
    if lanes <= 1:
        for chunk in chunks:
            yield from run(chunk)
        return
    pending = iter(chunks)
    take = threading.Lock()
    stop = threading.Event()
    out: queue.Queue[tuple[str, Any]] = queue.Queue()

    def lane() -> None:
        try:
            while not stop.is_set():
                with take:
                    chunk = next(pending, None)
                if chunk is None:
                    return
                for item in run(chunk):
                    out.put(("item", item))
        except BaseException as exc:  # handed to the caller's thread
            stop.set()
            out.put(("error", exc))
        finally:
            out.put(("done", None))

    threads = [
        threading.Thread(target=lane, daemon=True, name=f"cropper-lane-{i}") for i in range(lanes)
    ]
    for thread in threads:
        thread.start()
    running = lanes
    try:
        while running:
            kind, value = out.get()
            if kind == "done":
                running -= 1
            elif kind == "error":
                raise value
            else:
                yield value
    finally:
        stop.set()  # lanes finish the chunk they hold and take no other
