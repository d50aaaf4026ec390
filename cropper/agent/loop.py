"""The in-context cropping loop: retrieve, prompt, propose, parse, score, refine, select.

``Cropper`` only orchestrates. It is handed (or builds, from names) its VLM,
CLIP embedder, aesthetic head, exemplar bank and prompt files, and returns data:
the best crop with every candidate and the trace of rounds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cropper.agent import components
from cropper.agent.batching import (
    Embed,
    Generate,
    Score,
    Server,
    Steps,
    drive_many,
    drive_one,
    pipelined,
    together,
)
from cropper.agent.composition import (
    Composition,
    composition_schema,
    load_compositions,
    parse_composition,
)
from cropper.agent.constraints import (
    DEFAULT_MIN_SIDE,
    Constraints,
    avoid_shares,
    check_min_side,
)
from cropper.agent.diversity import diverse_top
from cropper.agent.exemplars import ExemplarSource, PromptExemplar
from cropper.agent.focus import focus_point
from cropper.agent.parsing import parse_boxes, parse_reply
from cropper.agent.prompts import PromptPhoto, PromptSet
from cropper.agent.request import CropRequest, make_request
from cropper.agent.result import Candidate, CropResult, PartialCrop, RatioCrops, Round
from cropper.agent.sizing import budget_from_spec, fit_to_budget, within_aspect
from cropper.core import defaults
from cropper.core.boxes import Box, fit_aspect
from cropper.core.errors import ConfigError, CropperError, WeightsNotFoundError
from cropper.core.fetch import is_url, show_url
from cropper.core.images import ImageInput, load_image
from cropper.core.messages import Conversation, released
from cropper.core.photos import Photo
from cropper.core.tasks import Ratio, Subject, subject_from_spec
from cropper.scoring.knowledge import KNOWLEDGE_DIR
from cropper.scoring.saliency import saliency_map
from cropper.scoring.scorer import Scorer, weights_by_task
from cropper.vlm.base import VLM, Sampling
from cropper.vlm.schema import boxes_schema, ground_schema

if TYPE_CHECKING:
    from cropper.agent.baselines import Baseline

log = logging.getLogger(__name__)

DEFAULT = components.DEFAULT
#: Photos a batch takes through the loop together when no concurrency is given.
DEFAULT_CHUNK = 16
#: The most pixels of photos a batch holds decoded at once (4 bytes a pixel or so, while
#: loading): a chunk closes early when its photos reach this share, so 16 photos of 144
#: megapixels go through a few at a time instead of taking 14 GB together.
PIXELS_IN_FLIGHT = 400_000_000
#: Chunks a batch keeps in flight on a backend whose calls overlap (a server).
LANES = 2
#: What a photo whose size cannot be read ahead (a URL) counts for.
UNKNOWN_PIXELS = 12_000_000


@dataclass(frozen=True)
class CropConfig:
    """The loop's settings; paper defaults. Override any per ``Cropper`` or per ``crop`` call."""

    exemplars: int = 30  # S: exemplars retrieved per query
    exemplar_crops: int = 5  # T: crops shown per exemplar (free-form: top by MOS)
    crops: int = 6  # R: crops the VLM proposes per round, all in one reply
    samples: int = 1  # replies sampled per round (n); each proposes up to `crops` crops
    refine_rounds: int = 2  # L: refinement rounds after the first proposal
    temperature: float = 0.05
    max_tokens: int = 512  # per reply; enough for a dozen boxes as JSON
    coords: str = "norm1000"  # the convention boxes are written in (Qwen3-VL: norm1000)
    query_side: int = 1024  # longer side of the query photo as sent to the VLM
    exemplar_side: int = 448  # longer side of each exemplar photo as sent
    candidate_side: int = 224  # longer side of each candidate crop shown when refining
    retries: int = 1  # extra tries of a round that yields no valid box
    select: dict[str, str] = field(
        default_factory=lambda: {"free": "last", "subject": "last", "aspect": "all"}
    )  # the rounds the best crop is chosen from, per task
    seed: int | None = None  # sampling seed, for reproducible runs
    # Photos sized as the model's processor wants them ("qwen2.5-vl", "qwen3-vl",
    # "NAME:MAX_PIXELS" for a server's max_pixels), so it does not resize them again and
    # pixel boxes mean what the model saw; None: the longer side fitted only.
    pixel_budget: Any = None
    compose: bool = False  # first ask the VLM which composition suits the photo (KCM/CACNet)
    top_k: int = 1  # crops in result.top: the best of all rounds that overlap little
    diversity_iou: float = 0.5  # the most IoU two crops of result.top may share
    allow_urls: bool = False  # fetch photos given as http(s) URLs (size and time limited)
    # Each side of every returned crop is at least this share of the photo's side; a
    # proposal below it is grown (see cropper.agent.constraints).
    min_side: float = DEFAULT_MIN_SIDE
    top_p: float | None = None  # nucleus sampling; None: the backend's default, not sent
    # Sample from the k likeliest tokens (a request's "top_k"; ``top_k`` above is the number
    # of diverse crops returned); None: not sent.
    sampling_top_k: int | None = None

    def __post_init__(self) -> None:
        budget_from_spec(self.pixel_budget)  # a bad name fails here, not mid-batch
        diverse_top((), self.top_k, self.diversity_iou)  # so do a bad top_k and threshold
        check_min_side(self.min_side)
        if not (isinstance(self.temperature, (int, float)) and 0 <= self.temperature <= 2):
            raise ConfigError(f"temperature must be between 0 and 2, got {self.temperature!r}")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise ConfigError(f"samples must be a whole number >= 1, got {self.samples!r}")
        if self.temperature == 0 and self.samples > 1:
            raise ConfigError(
                f"temperature=0 gives the same reply every time, so samples={self.samples} "
                "would only repeat it: set temperature above 0, or samples=1"
            )
        if self.top_p is not None and not (
            isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1
        ):
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.sampling_top_k is not None and (
            isinstance(self.sampling_top_k, bool)
            or not isinstance(self.sampling_top_k, int)
            or self.sampling_top_k < 1
        ):
            raise ConfigError(
                f"sampling_top_k must be a whole number >= 1, got {self.sampling_top_k!r}"
            )

    def replace(self, **changes: Any) -> CropConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {sorted(unknown)}; the settings are "
                f"{[f.name for f in dataclasses.fields(self)]}"
            )
        return dataclasses.replace(self, **changes)


class Cropper:
    """Crops photos with a VLM by in-context learning.

    Args:
        vlm: a server URL (``http://host:8000/v1``), a hub id or local folder for
            transformers, ``vllm:MODEL`` for vLLM's engine, or a :class:`VLM`.
            Default: ``$CROPPER_VLM``, else :data:`cropper.core.defaults.DEFAULT_VLM`.
            ``None`` or ``"none"`` (also as ``$CROPPER_VLM``): no VLM; each crop is
            GAICD's grid candidate that the aesthetic head ranks first
            (:class:`cropper.agent.baselines.HeadGridCrop`), and the bank is not used.
        clip: an open_clip spec (``ViT-L-14:openai``, ``hf-hub:...``,
            ``local-dir:...``), an embedder, or ``None`` for none. Default: the
            bank's embedder, else ``$CROPPER_CLIP``, else ``ViT-L-14:openai``.
        head: aesthetic head weights (path, ``hf-hub:ORG/REPO/FILE``), a head, or
            ``None``. Default: ``$CROPPER_HEAD``, else the LAION predictor when
            the CLIP is ViT-L/14.
        index: a bank folder (see ``retrieval``) or an ``ExemplarIndex``; without
            one the loop runs zero-shot.
        prompts: a folder of prompt files; default: the shipped ones.
        score_weights: how much each score term counts (see :mod:`cropper.scoring.scorer`):
            ``"aesthetic=1,area=1,knowledge=1"`` or a :class:`~cropper.scoring.scorer.Weights` for
            every task, or a dict of them by task; default: the paper's per task. A
            ``knowledge`` weight scores crops against the prompt folder's
            ``knowledge/good.txt`` and ``bad.txt`` (:mod:`cropper.scoring.knowledge`).
        config: a :class:`CropConfig`; ``**settings`` override its fields.
        api_key: for a server that needs one (else ``$CROPPER_API_KEY``).
        model: the model a server serves to use; needed when it lists several.
        vlm_options: passed to the VLM backend, e.g. a server's ``timeout`` (seconds a
            request may take, default 120), ``max_retries`` (default 4) and
            ``structured_outputs`` (False for servers without them).
    """

    def __init__(
        self,
        vlm: Any = DEFAULT,
        *,
        clip: Any = DEFAULT,
        head: Any = DEFAULT,
        index: Any = DEFAULT,
        prompts: str | Path | PromptSet | None = None,
        config: CropConfig | None = None,
        api_key: str | None = None,
        score_weights: Any = None,
        vlm_options: dict[str, Any] | None = None,
        model: str | None = None,
        **settings: Any,
    ):
        self.config = (config or CropConfig()).replace(**settings)
        vlm = components.vlm_spec(vlm)  # a malformed spec fails before the models load
        index = components.index_spec(index)
        if vlm is not None:
            components.check_index(index)  # so does a bank that cannot be used
        self.prompts = prompts if isinstance(prompts, PromptSet) else PromptSet(prompts)
        # Models not on this machine are gathered, so that one message names them all.
        missing: list[components.MissingModel] = []
        try:
            self.embedder = components.make_embedder(clip, index)
        except WeightsNotFoundError:
            missing.append(components.missing_clip(str(components.clip_spec(clip, index))))
            self.embedder = None
        weights = weights_by_task(score_weights)
        clip_name = components.clip_spec(clip, index) if missing else None
        aesthetic_head = components.make_head(head, self.embedder, clip=clip_name, missing=missing)
        if missing and not any(m.flag == "--clip" for m in missing):
            # The default head alone: scoring goes on without it (the scorer says how).
            log.warning("default aesthetic head %s is not on this machine", missing[0].spec)
            missing.clear()
        if missing:
            vlm_missing = components.missing_vlm(vlm)  # looked up, not loaded
            raise components.missing_models_error(missing + ([vlm_missing] if vlm_missing else []))
        # Exemplars only feed the VLM's prompt: without a VLM the bank is left unloaded.
        self.index = components.make_index(index, self.embedder) if vlm is not None else None
        self.scorer = Scorer(
            self.embedder,
            aesthetic_head,
            weights=weights,
            knowledge=components.make_knowledge(
                self.embedder, self.prompts.folder / KNOWLEDGE_DIR, weights, aesthetic_head
            ),
        )
        options = dict(vlm_options or {})
        if model is not None:
            options["model"] = model
        try:
            self.vlm: VLM | None = components.make_vlm(vlm, api_key=api_key, options=options)
        except WeightsNotFoundError:
            vlm_missing = components.missing_vlm(vlm)
            if vlm_missing is None:
                raise  # the VLM's own message (a folder without a checkpoint, say)
            raise components.missing_models_error([vlm_missing]) from None
        self._exemplars = ExemplarSource(self.index) if self.index else None
        self._server = Server(self.vlm, self.embedder, self.scorer)
        self._no_vlm: Baseline | None = None
        self._compositions: list[Composition] | None = None  # read when first needed
        if self.vlm is None:
            from cropper.agent.baselines import HeadGridCrop, SaliencyCrop

            if self.embedder is None:
                self._no_vlm = SaliencyCrop()
                # Said once a run, as it is no model's judgement but a classical method's.
                log.warning(
                    "no VLM and no embedder: cropping by spectral-residual saliency (Hou & "
                    "Zhang, 2007), which needs no model"
                )
            else:
                self._no_vlm = HeadGridCrop(self.scorer)
                log.info("no VLM: cropping with the aesthetic head over GAICD's grid candidates")
        elif self.index is None:
            log.info("no exemplar index: cropping zero-shot (pass index= a bank folder)")
        if self.vlm is not None and vlm == defaults.CPU_VLM:
            # Said once, when the machine chose it: a user on a laptop should know to wait.
            log.warning(
                "no CUDA GPU: cropping with %s in-process, about 4 minutes a photo on 2 CPU "
                "cores (more with a bank); serve a VLM on a GPU and pass --vlm URL for speed",
                vlm,
            )

    # -- the loop --------------------------------------------------------------
    def crop(
        self,
        image: ImageInput,
        task: str = "free",
        *,
        subject: Any = None,
        ratio: Any = None,
        keep: Any = None,
        avoid: Any = None,
        protect: Any = None,
        size: Any = None,
        **settings: Any,
    ) -> CropResult | RatioCrops:
        """Crop one photo.

        Args:
            image: a path, PIL image, array or bytes.
            task: ``"free"``, ``"subject"`` or ``"aspect"``.
            subject: for ``"subject"``: a point ``(x, y)``, a box ``(x0, y0, x1, y1)``
                (normalized), a mask, a text phrase, or ``None`` (the VLM finds the
                main subject).
            ratio: for ``"aspect"``: ``"16:9"``, ``1.78`` or ``(16, 9)``; or a list of
                them (``["1:1", "4:5"]``), which returns a :class:`RatioCrops`, one crop per
                ratio keyed by the ratio as written.
            keep: normalized boxes ``(x0, y0, x1, y1)`` every crop must hold.
            avoid: normalized boxes a crop should leave out: the share of them it holds
                is taken from its score (the ``avoid`` term).
            protect: ``"faces"``: no crop cuts through a face, and the largest face is
                in whenever the request allows (needs ``cropper[faces]``).
            size: the crop's size as :attr:`CropResult.image` gives it: the long side
                (``1080``) or ``(w, h)`` (``"1080x1350"``), which implies its ratio.
            **settings: :class:`CropConfig` fields for this call only.
        """
        cfg = self.config.replace(**settings) if settings else self.config
        request = make_request(
            task, subject=subject, ratio=ratio, keep=keep, avoid=avoid, protect=protect, size=size
        )
        if self._no_vlm is not None:
            return self._crop_without_vlm(image, request, cfg)
        return drive_one(self._steps(image, request, cfg), self._server)

    def crop_batch(
        self,
        images: Sequence[ImageInput],
        task: str = "free",
        *,
        subject: Any = None,
        ratio: Any = None,
        keep: Any = None,
        avoid: Any = None,
        protect: Any = None,
        size: Any = None,
        concurrency: int | None = None,
        progress: bool = False,
        **settings: Any,
    ) -> list[CropResult | RatioCrops | CropperError]:
        """Crop many photos, their rounds moving together; results in the order given.

        Every photo's round-k prompts go to the VLM in one call (batched in-process, up to
        ``concurrency`` requests in flight on a server) and every photo's crops are scored
        in one embedder pass. A photo that cannot be cropped gets its
        :class:`CropperError` in its place; the others are still cropped. ``subject``,
        ``ratio``, ``keep``, ``avoid``, ``protect`` and ``size`` (as for :meth:`crop`)
        apply to every photo.
        """
        results: list[CropResult | RatioCrops | CropperError | None] = [None] * len(images)
        for i, result in self.crop_stream(
            images,
            task,
            subject=subject,
            ratio=ratio,
            keep=keep,
            avoid=avoid,
            protect=protect,
            size=size,
            concurrency=concurrency,
            progress=progress,
            **settings,
        ):
            results[i] = result
        return results  # type: ignore[return-value]

    def crop_stream(
        self,
        images: Sequence[ImageInput],
        task: str = "free",
        *,
        subject: Any = None,
        ratio: Any = None,
        keep: Any = None,
        avoid: Any = None,
        protect: Any = None,
        size: Any = None,
        concurrency: int | None = None,
        progress: bool = False,
        **settings: Any,
    ) -> Iterator[tuple[int, CropResult | RatioCrops | CropperError]]:
        """:meth:`crop_batch`, yielding ``(position, result)`` as each photo is done.

        Photos go through in chunks of ``concurrency`` (default 16) so a folder of
        thousands is never all in memory, and results can be saved as they come.
        """
        cfg = self.config.replace(**settings) if settings else self.config
        # A bad request fails before any work.
        request = make_request(
            task, subject=subject, ratio=ratio, keep=keep, avoid=avoid, protect=protect, size=size
        )
        if request.protect:
            check_face_detector()  # a missing extra, too
        if concurrency is not None and (isinstance(concurrency, bool) or concurrency < 1):
            raise ConfigError(f"concurrency must be a whole number >= 1, got {concurrency!r}")
        chunk = concurrency or DEFAULT_CHUNK
        # A backend whose calls overlap (a server) gets LANES chunks at once: one is served
        # while another's next round is prepared. In-process engines compute in the
        # calling thread: one at a time.
        overlaps = self.vlm is not None and self.vlm.overlaps_calls
        lanes = LANES if overlaps and len(images) > 1 else 1
        chunks = chunk_photos(images, chunk, PIXELS_IN_FLIGHT // lanes)
        # The batch's bound goes with each VLM call; the backend's own is left as it is.
        server = self._server.bounded(concurrency)

        def run(
            positions: list[int],
        ) -> Iterator[tuple[int, CropResult | RatioCrops | CropperError]]:
            if self._no_vlm is not None:
                return self._crop_each_without_vlm(images, positions, request, cfg)
            steps = {i: self._steps(images[i], request, cfg) for i in positions}
            return drive_many(steps, server)

        with _progress_bar(len(images), progress) as bar:
            for i, result in pipelined(chunks, run, lanes):
                bar.update(1)
                yield i, result

    def _crop_each_without_vlm(
        self,
        images: Sequence[ImageInput],
        positions: list[int],
        request: CropRequest,
        cfg: CropConfig,
    ) -> Iterator[tuple[int, CropResult | RatioCrops | CropperError]]:
        assert self._no_vlm is not None
        for i in positions:
            try:
                yield i, self._crop_without_vlm(images[i], request, cfg)
            except CropperError as exc:
                yield i, exc

    def _crop_without_vlm(
        self, image: ImageInput, request: CropRequest, cfg: CropConfig
    ) -> CropResult | RatioCrops:
        """Each ratio's crop by the baseline; the photo is loaded and its faces found once."""
        assert self._no_vlm is not None
        ref, photo = Photo.open(image, _working_side(cfg), allow_urls=cfg.allow_urls)
        faces = self._find_faces(photo, request)
        results = {}
        saliency = None  # for the focus of a crop without a subject, made once
        for ratio_ in request.ratios or (None,):
            result = self._no_vlm.crop(
                photo,
                request.task,
                subject=request.subject,
                ratio=ratio_,
                min_side=cfg.min_side,
                reference=ref,
                keep=request.keep,
                avoid=request.avoid,
                faces=faces or (),
            )
            result = dataclasses.replace(_with_top(result, cfg), source=_name(image) or None)
            if result.subject is None and saliency is None:
                saliency = saliency_map(photo)
            results[ratio_.text if ratio_ else ""] = self._finish(result, request, faces, saliency)
        return self._gathered(results, request, _name(image))

    def _gathered(
        self, results: dict[str, CropResult], request: CropRequest, name: str
    ) -> CropResult | RatioCrops:
        """One result, or one a ratio when ratios were listed."""
        if not request.several:
            return next(iter(results.values()))
        first = next(iter(results.values()))
        shared = tuple(n for n in first.notes if all(n in r.notes for r in results.values()))
        return RatioCrops(results, source=name or None, notes=shared)

    def _find_faces(self, photo: Any, request: CropRequest) -> tuple[Box, ...] | None:
        """The photo's faces, largest first, when the request protects them."""
        if "faces" not in request.protect:
            return None
        from cropper.scoring.faces import detect_faces

        return tuple(face.box for face in detect_faces(photo))

    def _finish(
        self,
        result: CropResult,
        request: CropRequest,
        faces: tuple[Box, ...] | None,
        saliency: Any = None,
    ) -> CropResult:
        """The result with what the request adds: focus, faces, regions, output size."""
        notes = list(result.notes)
        if faces is not None:
            found = ", ".join(str(f) for f in faces) or "none"
            notes.append(f"faces protected: {len(faces)} found ({found})")
        output_size = None
        if request.size is not None:
            left, top, right, bottom = result.pixels
            output_size = request.size.for_crop((right - left, bottom - top))
            if output_size[0] > right - left or output_size[1] > bottom - top:
                notes.append(
                    f"the {right - left}x{bottom - top} px crop is upscaled to "
                    f"{output_size[0]}x{output_size[1]} for size {request.size}"
                )
        focus = focus_point(
            result.box, subject=result.subject, faces=faces or (), saliency=saliency
        )
        return dataclasses.replace(
            result,
            notes=tuple(notes),
            focus=focus,
            faces=faces,
            keep=request.keep,
            avoid=request.avoid,
            output_size=output_size,
        )

    def _steps(self, image: ImageInput, request: CropRequest, cfg: CropConfig) -> Steps:
        """One photo's loop; it yields what it needs from the models (see cropper.agent.batching).

        An error that ends it carries what was done so far as ``partial``, for debugging.
        """
        trace: list[Round] = []
        loaded: list[Any] = []  # the photo, once loaded
        try:
            return (yield from self._crop_steps(image, request, cfg, trace, loaded))
        except CropperError as exc:
            exc.partial = PartialCrop(
                _name(image) or None,
                request.task,
                loaded[0] if loaded else None,
                tuple(trace),
                str(exc),
            )
            raise

    def _crop_steps(
        self,
        image: ImageInput,
        request: CropRequest,
        cfg: CropConfig,
        trace: list[Round],
        loaded: list[Any],
    ) -> Steps:
        """Load, ground, find faces, embed and retrieve once; then each ratio's rounds.

        Several ratios run in lockstep (:func:`cropper.agent.batching.together`): their
        round-k prompts go to the VLM in one call, their crops to one scoring pass.
        """
        task = request.task
        # A copy as large as the prompts and scores need; full resolution only when saved.
        ref, photo = Photo.open(image, _working_side(cfg), allow_urls=cfg.allow_urls)
        loaded.append(photo)
        budget = budget_from_spec(cfg.pixel_budget)
        side = _working_side(cfg)
        query = PromptPhoto(
            fit_to_budget(photo, budget, cfg.query_side),
            key=_name(image),
            make=lambda: fit_to_budget(ref.load_pixels(side), budget, cfg.query_side),
        )
        notes: list[str] = []  # the result's own, beside its rounds'
        fallbacks: list[str] = []
        if within_aspect(ref.size) != ref.size:
            w, h = ref.size
            notes.append(
                f"the photo is {w}x{h}, too long and thin for a VLM's image processor: it was "
                f"sent stretched across to {query.size[0]}x{query.size[1]} (boxes are relative, "
                "so they map back exactly)"
            )
        subject_ = None
        if task == "subject":
            subject_ = yield from self._find_subject(request.subject, ref.size, query, cfg, trace)
            if subject_.source == "fallback":
                fallbacks.append(
                    "the photo's centre as the subject, as the VLM gave no subject box"
                )
        faces = self._find_faces(photo, request)
        embedding = yield from self._embed(photo, task)
        ratios: tuple[Ratio | None, ...] = request.ratios or (None,)
        exemplars, itself = self._retrieve(embedding, task, subject_, ratios, cfg, _name(image))
        if itself:
            notes.append(
                f"the photo itself is in the exemplar bank ({itself[0]}): left out of its own "
                "exemplars"
            )
        scoring = self.scorer.scoring_note(task)
        if scoring:
            notes.append(scoring)
        shared = _Shared(
            ref, photo, query, subject_, embedding, faces or (), notes, fallbacks, image
        )
        if len(ratios) == 1:
            results = [
                (yield from self._ratio_steps(shared, request, ratios[0], exemplars[0], cfg, trace))
            ]
        else:
            runs = [
                _named(
                    self._ratio_steps(shared, request, ratio_, found, cfg, list(trace)),
                    ratio_.text if ratio_ else "",
                )
                for ratio_, found in zip(ratios, exemplars, strict=True)
            ]
            results = yield from together(runs)
        saliency = saliency_map(photo) if subject_ is None else None  # for focus, once
        finished = {
            (ratio_.text if ratio_ else ""): self._finish(result, request, faces, saliency)
            for ratio_, result in zip(ratios, results, strict=True)
        }
        return self._gathered(finished, request, _name(image))

    def _ratio_steps(
        self,
        shared: _Shared,
        request: CropRequest,
        ratio_: Ratio | None,
        exemplars: list[PromptExemplar],
        cfg: CropConfig,
        trace: list[Round],
    ) -> Steps:
        """The rounds of one request (one ratio of several): propose, score, refine, select."""
        task, photo, query, subject_ = request.task, shared.photo, shared.query, shared.subject
        image, embedding = shared.image, shared.embedding
        notes, fallbacks = list(shared.notes), list(shared.fallbacks)
        composition = None
        if cfg.compose:
            composition = yield from self._choose_composition(
                task, query, subject_, ratio_, cfg, trace
            )
            if composition is None:
                fallbacks.append("no composition rule, as the VLM named no known composition")
        constraints = Constraints(
            shared.ref.size,  # whole pixels of the photo, as the crop is cut
            cfg.min_side,
            subject_,
            ratio_.value if ratio_ else None,
            keep=request.keep,
            faces=shared.faces,
        )
        constraints.check_keep()
        variables = dict(
            query=query,
            exemplars=exemplars,
            subject=subject_,
            ratio=ratio_,
            n_crops=cfg.crops,
            composition=composition,
            keep=request.keep,
            avoid=request.avoid,
        )
        all_candidates: list[Candidate] = []
        feedback: list[Candidate] = []
        fell_back: dict[int, str] = {}  # round index: what stood in for its boxes, and why
        for k in range(1 + cfg.refine_rounds):
            stage = "propose" if k == 0 else "refine"
            index = len(trace)  # the round's place in the trace, after ground and compose
            prompt = self.prompts.render(
                task,
                stage,
                coords=cfg.coords,
                candidates=self._feedback(shared, feedback, cfg),
                **variables,
            )
            try:
                proposal = yield from self._propose(prompt, query.size, constraints, cfg)
            except CropperError as exc:
                trace.append(Round(index, stage, prompt, (), (), (f"failed: {exc}",)))
                raise
            boxes, repairs, source = list(proposal.boxes), list(proposal.repairs), "vlm"
            round_notes = list(proposal.notes)
            if not boxes:
                boxes, what, earlier = self._fallback(all_candidates, constraints, ratio_)
                repairs, source = [""] * len(boxes), "fallback"
                if earlier is not None and earlier.source == "fallback":
                    # What stood in before stands in again: keep its first reason.
                    why = f"{fell_back[earlier.round]}, and {stage} round {index} gave none either"
                else:
                    why = f"{what}, as {stage} round {index} {proposal.why}"
                fell_back[index] = why
                round_notes.append(f"fell back to {why}")
            scores = yield Score(photo, boxes, task, embedding)
            round_candidates = _candidates(boxes, scores, repairs, index, source, request.avoid)
            trace.append(
                Round(
                    index,
                    stage,
                    prompt,
                    tuple(proposal.replies),
                    round_candidates,
                    tuple(round_notes),
                    proposal.dropped,
                )
            )
            all_candidates.extend(round_candidates)
            feedback = sorted(round_candidates, key=lambda c: -c.score)[: cfg.crops]

        rule = cfg.select.get(task, "last")
        pool = all_candidates if rule == "all" else list(feedback)
        best = max(pool, key=lambda c: c.score)
        if best.source == "fallback":
            fallbacks.append(fell_back[best.round])
        higher = max(all_candidates, key=lambda c: c.score)
        if higher.score > best.score:
            notes.append(
                f"chosen from the last round, as the paper chooses {task} crops: a crop of round "
                f"{higher.round} scored higher ({higher.score:.4f} against {best.score:.4f})"
            )
        top = diverse_top(all_candidates, cfg.top_k, cfg.diversity_iou, first=best)
        fallback = "; ".join(fallbacks) or None
        if fallback:
            log.warning("%s: fell back to %s", _name(image) or "a photo", fallback)
        round_notes = [f"round {r.index} ({r.stage}): {n}" for r in trace for n in r.notes]
        return CropResult(
            box=best.box,
            score=best.score,
            task=task,
            photo=shared.ref,
            candidates=tuple(all_candidates),
            # The prompts without the pixels of this photo's copies: made again when shown.
            rounds=tuple(dataclasses.replace(r, prompt=released(r.prompt)) for r in trace),
            subject=subject_,
            ratio=ratio_,
            source=_name(image) or None,
            composition=composition.name if composition else None,
            top=top,
            fallback=fallback,
            notes=tuple(round_notes + notes),
        )

    # -- steps -----------------------------------------------------------------
    def _embed(self, photo: Any, task: str) -> Generator[Embed, Any, np.ndarray | None]:
        """The query's embedding, once, when retrieval or the content term needs it."""
        needed = self.index is not None or "content" in self.scorer.active_weights(task)
        if self.embedder is None or not needed:
            return None
        return (yield Embed(photo))

    def _retrieve(
        self,
        embedding: np.ndarray | None,
        task: str,
        subject: Subject | None,
        ratios: Sequence[Ratio | None],
        cfg: CropConfig,
        query: str = "",
    ) -> tuple[list[list[PromptExemplar]], list[str]]:
        """Each ratio's exemplars from one search of the bank, and the photo's own copies."""
        if self._exemplars is None or embedding is None:
            return [[] for _ in ratios], []
        return self._exemplars.retrieve_each(
            embedding,
            task,
            ratios,
            count=cfg.exemplars,
            crops_per_exemplar=cfg.exemplar_crops,
            side=cfg.exemplar_side,
            budget=budget_from_spec(cfg.pixel_budget),
            subject=subject,
            query=query if query and not is_url(query) else None,
        )

    def _sampling(self, n: int, schema: dict, cfg: CropConfig, temperature: float) -> Sampling:
        return Sampling(
            n=n,
            temperature=temperature,
            max_tokens=cfg.max_tokens,
            json_schema=schema,
            seed=cfg.seed,
            top_p=cfg.top_p,
            top_k=cfg.sampling_top_k,
        )

    def _propose(
        self,
        prompt: Conversation,
        query_size: tuple[int, int],
        constraints: Constraints,
        cfg: CropConfig,
    ) -> Generator[Generate, Any, Proposal]:
        """Ask for crops, repair them to the request, and retry a round with no valid box."""
        sampling = self._sampling(
            cfg.samples, boxes_schema(cfg.crops, cfg.coords, query_size), cfg, cfg.temperature
        )
        replies: list[str] = []
        notes: list[str] = []
        dropped: list[str] = []
        reasons: list[str] = []
        for attempt in range(1 + cfg.retries):
            if attempt and cfg.seed is not None:
                # The samples of a try use seeds seed .. seed + samples - 1 (a server that
                # ignores n is asked again with the next ones): a retry starts past them all.
                sampling = dataclasses.replace(sampling, seed=cfg.seed + attempt * cfg.samples)
            new = yield Generate(prompt, sampling)
            replies.extend(new)
            parsed = [parse_reply(r, cfg.coords, query_size) for r in new]
            written = [d for p in parsed for d in p.dropped]
            applied = constraints.apply([b for p in parsed for b in p.boxes])
            dropped += written + list(applied.dropped)
            notes += [
                f"{n} proposal{'s' * (n > 1)} dropped: {why}" for why, n in Counter(written).items()
            ] + applied.notes
            if applied.boxes:
                return Proposal(replies, applied.boxes, applied.changes, notes, tuple(dropped))
            reasons = sorted({p.reason for p in parsed if p.reason}) or ["no reply"]
            notes.append(f"try {attempt + 1}: no valid box ({'; '.join(reasons)})")
        why = f"gave no valid box in {1 + cfg.retries} tries ({'; '.join(reasons)})"
        hint = self._no_box_hint(replies, sampling)
        return Proposal(replies, (), (), notes, tuple(dropped), f"{why}{hint}")

    def _no_box_hint(self, replies: list[str], sampling: Sampling) -> str:
        """What the replies that held no box suggest, and what to do about it."""
        texts = [r.strip() if isinstance(r, str) else "" for r in replies]
        if texts and not any(texts):
            return (
                ": the model's replies were empty (a reasoning model may have spent max_tokens "
                "thinking: raise max_tokens)"
            )
        held = getattr(self.vlm, "constrains_output", False) and sampling.json_schema
        if texts and held and not any(_json_start(t) for t in texts):
            return (
                ": its replies are not JSON although the JSON schema was sent as "
                "response_format, so the server ignores it (transformers serve does): serve the "
                "model where structured outputs work (vLLM, SGLang), or use a model that "
                "follows the prompt's answer format"
            )
        return ""

    @staticmethod
    def _fallback(
        earlier: list[Candidate], constraints: Constraints, ratio: Ratio | None
    ) -> tuple[list[Box], str, Candidate | None]:
        """What stands in for a round's boxes, in words, and the earlier candidate it is.

        It satisfies the request as any crop does: keep regions held, no face cut.
        """
        if ratio is not None:
            box = constraints.repair(fit_aspect(Box.whole(), ratio.value, constraints.size)).box
            same = next((c for c in earlier if c.box == box and c.source == "fallback"), None)
            return [box], "the largest centred crop", same
        if earlier:
            best = max(earlier, key=lambda c: c.score)
            return [best.box], "the best earlier candidate", best
        return [constraints.repair(Box.whole()).box], "the whole photo", None

    def _feedback(
        self, shared: _Shared, candidates: list[Candidate], cfg: CropConfig
    ) -> list[dict[str, Any]]:
        """The previous round's crops as the refine prompt shows them."""
        budget, side = budget_from_spec(cfg.pixel_budget), _working_side(cfg)

        def crop_of(photo: Any, box: Box) -> Any:
            region = box.to_pixels(photo.size)
            return fit_to_budget(photo, budget, cfg.candidate_side, region=region)

        return [
            {
                "photo": PromptPhoto(
                    crop_of(shared.photo, c.box),
                    # the reference alone: a closure over `shared` would keep its working copy
                    make=lambda box=c.box, ref=shared.ref: crop_of(ref.load_pixels(side), box),
                ),
                "box": c.box,
                "score": c.score,
                "round": c.round,
            }
            for c in candidates
        ]

    def _find_subject(
        self,
        spec: Any,
        size: tuple[int, int],
        query: PromptPhoto,
        cfg: CropConfig,
        trace: list[Round],
    ) -> Generator[Generate, Any, Subject]:
        """The subject as given (a mask of the photo's ``size``), or found by the VLM."""
        found = subject_from_spec(spec, size)
        if isinstance(found, Subject):
            return found
        text = found  # a phrase, or None for the main subject
        prompt = self.prompts.render(
            "subject", "ground", coords=cfg.coords, query=query, subject_text=text
        )
        sampling = self._sampling(1, ground_schema(cfg.coords), cfg, 0.0)
        replies = yield Generate(prompt, sampling)
        boxes = [b for r in replies for b in parse_boxes(r, cfg.coords, query.size)]
        if boxes:
            subject = Subject(boxes[0].center, boxes[0], text, "text" if text else "auto")
            note = f"subject found at {boxes[0]}"
        else:
            subject = Subject((0.5, 0.5), None, text, "fallback")
            note = "the VLM gave no subject box: assumed the photo's centre"
        trace.append(Round(len(trace), "ground", prompt, tuple(replies), (), (note,)))
        return subject

    def _choose_composition(
        self,
        task: str,
        query: PromptPhoto,
        subject: Subject | None,
        ratio: Ratio | None,
        cfg: CropConfig,
        trace: list[Round],
    ) -> Generator[Generate, Any, Composition | None]:
        """Ask the VLM which of the prompt folder's compositions suits the photo."""
        if self._compositions is None:
            self._compositions = load_compositions(self.prompts.folder)
        prompt = self.prompts.render(
            task,
            "compose",
            coords=cfg.coords,
            query=query,
            subject=subject,
            ratio=ratio,
            compositions=self._compositions,
        )
        sampling = self._sampling(1, composition_schema(self._compositions), cfg, 0.0)
        replies = yield Generate(prompt, sampling)
        chosen = next((c for r in replies if (c := parse_composition(r, self._compositions))), None)
        note = f"composition: {chosen.name}" if chosen else "the VLM named no known composition"
        trace.append(Round(len(trace), "compose", prompt, tuple(replies), (), (note,)))
        return chosen

    def score_boxes(
        self, image: ImageInput, boxes: Sequence[Box], task: str = "free"
    ) -> list[float]:
        """The score the loop would give each of ``boxes`` for ``task``: its own terms.

        With a VLM, the scorer's weighted terms (the ones the run uses); without one, the
        ranking of the baseline it crops with. Used by ``cropper eval crop`` to rank a
        benchmark's annotated crops as the published GAICD numbers do.
        """
        if self._no_vlm is not None:
            return self._no_vlm.score_boxes(image, boxes, task)
        photo = load_image(image, allow_urls=self.config.allow_urls)
        return [s.total for s in self.scorer.score(photo, list(boxes), task)]

    def close(self) -> None:
        if self.vlm is not None:
            self.vlm.close()

    def __enter__(self) -> Cropper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chunk_photos(images: Sequence[ImageInput], size: int, max_pixels: int) -> Iterator[list[int]]:
    """Positions of ``images`` in chunks of at most ``size`` photos and ``max_pixels`` pixels.

    A photo larger than ``max_pixels`` goes alone. Sizes are read from file headers as the
    chunks are taken, so a folder of thousands is not read ahead.
    """
    chunk: list[int] = []
    pixels = 0
    for i, image in enumerate(images):
        n = photo_pixels(image)
        if chunk and (len(chunk) >= size or pixels + n > max_pixels):
            yield chunk
            chunk, pixels = [], 0
        chunk.append(i)
        pixels += n
    if chunk:
        yield chunk


def photo_pixels(image: ImageInput) -> int:
    """The pixels a photo will have decoded, from its header; a guess where none is read."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.width * image.height
    if isinstance(image, np.ndarray):
        return int(np.prod(image.shape[:2])) if image.ndim >= 2 else UNKNOWN_PIXELS
    try:
        if isinstance(image, (bytes, bytearray)):
            import io

            with Image.open(io.BytesIO(image)) as opened:
                return opened.width * opened.height
        if isinstance(image, (str, Path)) and not is_url(str(image)):
            if not os.path.isfile(image):  # a FIFO or a folder is never opened here
                return UNKNOWN_PIXELS
            with Image.open(image) as opened:  # the header only
                return opened.width * opened.height
    except Exception:  # any: loading the photo will report what is wrong with it
        return UNKNOWN_PIXELS
    return UNKNOWN_PIXELS


@contextlib.contextmanager
def _progress_bar(total: int, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield _NoBar()
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc="cropping", unit="photo", disable=None) as bar:
        yield bar


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


@dataclass(frozen=True)
class Proposal:
    """A round's replies and the valid crops read from them (none: ``why``)."""

    replies: list[str]
    boxes: tuple[Box, ...]
    repairs: tuple[str, ...]  # per box: how it was changed to satisfy the request
    notes: list[str]
    dropped: tuple[str, ...]
    why: str = ""  # when there is no box: why, and what to do


@dataclass(frozen=True)
class _Shared:
    """What a photo's requests share, found once: photo, subject, faces, embedding."""

    ref: Photo  # the photo by reference: its full size, full pixels when saved
    photo: Any  # the working copy the prompts and scores are made from
    query: PromptPhoto
    subject: Subject | None
    embedding: np.ndarray | None
    faces: tuple[Box, ...]
    notes: list[str]
    fallbacks: list[str]
    image: ImageInput


def _named(steps: Steps, ratio: str) -> Steps:
    """``steps``, with an error that ends them naming the ratio they were for."""
    try:
        return (yield from steps)
    except CropperError as exc:
        exc.args = (f"ratio {ratio}: {exc}", *exc.args[1:])
        raise


def _candidates(
    boxes: Sequence[Box],
    scores: Sequence[Any],
    repairs: Sequence[str],
    index: int,
    source: str,
    avoid: Sequence[Box],
) -> tuple[Candidate, ...]:
    """A round's candidates; with regions to avoid, the share held is taken off the score."""
    held = avoid_shares(boxes, avoid)
    return tuple(
        Candidate(
            b,
            s.total - float(share) if avoid else s.total,
            {**s.terms, "avoid": round(float(share), 6)} if avoid else dict(s.terms),
            index,
            source,
            repair,
        )
        for b, s, repair, share in zip(boxes, scores, repairs, held, strict=True)
    )


#: The least longer side of the copy of a photo the loop works from (prompts, scoring,
#: saliency, faces): past the query's side and CLIP's input, so a crop of a tenth of the
#: photo still has some 100 px for the embedder.
WORKING_SIDE = 1024


def _working_side(cfg: CropConfig) -> int:
    return max(WORKING_SIDE, cfg.query_side)


def check_face_detector() -> None:
    """Fail at once, in one line, when faces are protected but the detector is missing."""
    from PIL import Image

    from cropper.scoring.faces import detect_faces

    detect_faces(Image.new("RGB", (32, 32)))


def _json_start(text: str) -> bool:
    """Whether a reply begins as the JSON object a schema-held decoder writes."""
    return text.lstrip().startswith("{")


def _with_top(result: CropResult, cfg: CropConfig) -> CropResult:
    top = diverse_top(result.candidates, cfg.top_k, cfg.diversity_iou, first=_chosen(result))
    return dataclasses.replace(result, top=top)


def _chosen(result: CropResult) -> Candidate | None:
    return next((c for c in result.candidates if c.box == result.box), None)


def _name(image: ImageInput) -> str:
    # A URL is named without any password it carries: the name goes into traces and files.
    if not isinstance(image, (str, Path)):
        return ""
    return show_url(str(image)) if is_url(str(image)) else str(image)
