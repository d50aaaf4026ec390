"""Training the aesthetic head on rated crops' embeddings, as ``cropper train-head`` does.

:func:`train_head` fits an MLP ``dim -> hidden -> 1`` (ReLU) to z-scored MOS. The loss is the
mean squared error plus a pairwise logistic (RankNet) term over the pairs of crops of one
photo whose MOS differ, because the benchmark metrics rank each photo's crops; each step
takes whole photos. The epoch with the best validation SRCC is kept. :func:`evaluate` gives
the GAICD metrics (:mod:`cropper.data.metrics`) of a head on held-out photos. The embeddings come
from :func:`cropper.data.crop_embeddings.embed_crops`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cropper.core.errors import ConfigError
from cropper.data.crop_embeddings import RatedCrops
from cropper.data.metrics import TOP_K, mean_score_metrics, photo_score_metrics

if TYPE_CHECKING:
    from cropper.scoring.head import AestheticHead

log = logging.getLogger(__name__)


def holdout(photos: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Photo positions for training and for validation: ``fraction`` of the PHOTOS, seeded.

    Whole photos are held out, never single crops: the metrics rank one photo's crops.
    """
    if not 0 < fraction < 1:
        raise ConfigError(f"the validation fraction must be between 0 and 1, got {fraction}")
    if photos < 2:
        raise ConfigError(f"{photos} rated photo: holding some out for validation needs at least 2")
    held = min(max(1, round(photos * fraction)), photos - 1)
    order = np.random.default_rng(seed).permutation(photos)
    return np.sort(order[held:]), np.sort(order[:held])


@dataclass(frozen=True)
class TrainConfig:
    """How :func:`train_head` trains; the defaults suit GAICD (about 1,000 photos of ~86 crops)."""

    epochs: int = 40  # passes over the training photos, at most
    lr: float = 1e-3  # Adam's learning rate
    hidden: int = 256  # the MLP's hidden width: dims (dim, hidden, 1)
    photos_per_step: int = 8  # whole photos a step, as ranking pairs lie within one photo
    rank_weight: float = 1.0  # the ranking term's weight beside the squared error
    weight_decay: float = 1e-4  # Adam's L2 penalty: a thousand photos overfit easily
    patience: int = 10  # stop after this many epochs without a better validation SRCC
    seed: int = 0  # the initial weights and the order of photos
    device: str | None = None  # "cpu", "cuda", "cuda:1"; None: CUDA when available

    def __post_init__(self) -> None:
        checks = {
            "epochs": _is_int(self.epochs, 1),
            "lr": _is_real(self.lr) and self.lr > 0,
            "hidden": _is_int(self.hidden, 1),
            "photos_per_step": _is_int(self.photos_per_step, 1),
            "rank_weight": _is_real(self.rank_weight) and self.rank_weight >= 0,
            "weight_decay": _is_real(self.weight_decay) and self.weight_decay >= 0,
            "patience": _is_int(self.patience, 1),
            "seed": _is_int(self.seed, 0),
        }
        bad = [f"{key}={getattr(self, key)!r}" for key, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(
                f"bad training settings {', '.join(bad)}: epochs, hidden, photos_per_step and "
                "patience must be 1 or more, seed 0 or more, lr > 0, the weights >= 0"
            )


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


@dataclass(frozen=True)
class Normalisation:
    """How MOS become the head's targets: z-scores over the training crops."""

    mean: float
    std: float
    mos_min: float  # the training MOS range, which AestheticHead.score maps onto [0, 1]
    mos_max: float

    @classmethod
    def fit(cls, mos: np.ndarray) -> Normalisation:
        mos = np.asarray(mos, dtype=np.float64)
        std = float(mos.std())
        if not std > 0:
            raise ConfigError(
                f"all {len(mos)} training crops have the same MOS, so there is nothing to learn: "
                "train on rated crops whose scores differ"
            )
        return cls(float(mos.mean()), std, float(mos.min()), float(mos.max()))

    def targets(self, mos: np.ndarray) -> np.ndarray:
        """What the head learns to output for ``mos``."""
        return (np.asarray(mos, dtype=np.float64) - self.mean) / self.std

    def to_mos(self, raw: np.ndarray) -> np.ndarray:
        """The MOS a raw head output stands for."""
        return np.asarray(raw, dtype=np.float64) * self.std + self.mean

    @property
    def output_range(self) -> tuple[float, float]:
        """Raw outputs of the lowest and highest training MOS (HeadConfig.output_range)."""
        low, high = self.targets(np.array([self.mos_min, self.mos_max]))
        return float(low), float(high)

    def to_dict(self) -> dict[str, Any]:
        """For the head's card: how to read its raw outputs and its scores."""
        return {
            "method": "zscore",
            **asdict(self),
            "raw": "(MOS - mean) / std",
            "score": "(MOS - mos_min) / (mos_max - mos_min), clipped to [0, 1]",
        }


@dataclass
class TrainResult:
    """The outcome of :func:`train_head`."""

    head: AestheticHead  # the best epoch's weights, on the CPU
    metrics: dict[str, float]  # validation metrics of the best epoch (cropper.data.metrics keys)
    untrained: dict[str, float]  # validation metrics of the initial weights, for comparison
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]]  # per epoch: epoch, loss (training mean), srcc
    normalisation: Normalisation
    config: TrainConfig
    device: str
    seconds: float
    data: dict[str, Any] = field(default_factory=dict)  # photo and crop counts

    def card(self, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The metadata a head card records (see :func:`cropper.scoring.head.save_head`)."""
        settings = asdict(self.config)
        return {
            "clip": self.head.embedder,
            "normalisation": self.normalisation.to_dict(),
            "metrics": {key: round(value, 6) for key, value in self.metrics.items()},
            "data": {**self.data, **(data or {})},
            "training": {
                **settings,
                "device": self.device,
                "best_epoch": self.best_epoch,
                "epochs_run": self.epochs_run,
                "seconds": round(self.seconds, 2),
                "untrained_srcc": round(self.untrained["srcc"], 6),
                "loss": "MSE of z-scored MOS + rank_weight * RankNet over pairs within a photo",
                "selection": "the epoch with the best validation SRCC",
            },
        }


def score_metrics(predicted: np.ndarray, crops: RatedCrops) -> dict[str, float]:
    """The GAICD metrics of ``predicted`` (one per row of ``crops``): per photo, averaged.

    Photos with fewer crops than the Acc metrics need (4) are left out.
    """
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1)
    if len(predicted) != len(crops.mos):
        raise ConfigError(f"{len(predicted)} predictions for {len(crops.mos)} crops")
    rows = [r for r in crops.rows() if len(r) >= max(TOP_K)]
    if not rows:
        raise ConfigError(
            f"none of the {crops.photos} validation photos has {max(TOP_K)} or more rated crops, "
            "which the metrics need: validate on other photos"
        )
    return mean_score_metrics(photo_score_metrics(crops.mos[r], predicted[r]) for r in rows)


def resolve_device(name: str | None) -> Any:
    """The ``torch.device`` that ``name`` names (None: CUDA when available), else ConfigError."""
    import torch

    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"device {name!r} is not a torch device ({exc}): use cpu or cuda"
        ) from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA devices; use "
            "cpu, or leave the device unset to use CUDA when there is one"
        )
    return device


def evaluate(head: AestheticHead, crops: RatedCrops) -> dict[str, float]:
    """The GAICD metrics (SRCC, PCC, Acc5, ...) of ``head`` on ``crops``."""
    return score_metrics(head.raw(crops.vectors), crops)


def train_head(
    train: RatedCrops,
    val: RatedCrops,
    config: TrainConfig | None = None,
    *,
    embedder: str | None = None,
) -> TrainResult:
    """Fit an aesthetic head to ``train``'s MOS, keeping the epoch with the best ``val`` SRCC.

    ``embedder`` (the spec the embeddings came from) is recorded in the head, so that a
    :class:`~cropper.scoring.scorer.Scorer` refuses it beside another embedder.
    """
    import torch

    from cropper.scoring.head import AestheticHead, HeadConfig

    config = config or TrainConfig()
    if train.dim != val.dim:
        raise ConfigError(f"training rows are {train.dim}-d but validation rows {val.dim}-d")
    start = time.perf_counter()
    norm = Normalisation.fit(train.mos)
    device = resolve_device(config.device)
    head_config = HeadConfig(
        dims=(train.dim, config.hidden, 1),
        activation="relu",
        output_range=norm.output_range,
        embedder=embedder,
    )
    with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's RNG
        torch.manual_seed(config.seed)
        head = AestheticHead(head_config, metadata={}, source="train_head")
    model = head.module.to(device)
    x = torch.from_numpy(train.vectors).to(device)
    target = torch.from_numpy(norm.targets(train.mos).astype(np.float32)).to(device)
    val_x = torch.from_numpy(val.vectors).to(device)

    def validate() -> dict[str, float]:
        model.eval()
        with torch.inference_mode():
            predicted = model(val_x)[:, 0].cpu().numpy()
        model.train()
        return score_metrics(predicted, val)

    untrained = validate()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rows = train.rows()
    order_rng = np.random.default_rng(config.seed)
    best: tuple[float, int, dict[str, Any], dict[str, float]] | None = None
    history: list[dict[str, float]] = []
    for epoch in range(1, config.epochs + 1):
        losses = []
        order = order_rng.permutation(train.photos)
        for first in range(0, len(order), config.photos_per_step):
            chosen = order[first : first + config.photos_per_step]
            index = torch.from_numpy(np.concatenate([rows[p] for p in chosen])).to(device)
            photo = torch.from_numpy(np.repeat(np.arange(len(chosen)), train.counts[chosen]))
            loss = _loss(model(x[index])[:, 0], target[index], photo.to(device), config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        metrics = validate()
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "srcc": metrics["srcc"]})
        log.info(
            "epoch %d: loss %.4f, validation SRCC %.4f", epoch, np.mean(losses), metrics["srcc"]
        )
        if best is None or metrics["srcc"] > best[0]:
            best = (metrics["srcc"], epoch, copy.deepcopy(model.state_dict()), metrics)
        elif epoch - best[1] >= config.patience:
            log.info("no better validation SRCC for %d epochs: stopping", config.patience)
            break
    assert best is not None  # epochs >= 1
    model.load_state_dict(best[2])
    model.to("cpu").eval()
    return TrainResult(
        head=head,
        metrics=best[3],
        untrained=untrained,
        best_epoch=best[1],
        epochs_run=len(history),
        history=history,
        normalisation=norm,
        config=config,
        device=str(device),
        seconds=time.perf_counter() - start,
        data={
            "train_photos": train.photos,
            "train_crops": int(train.counts.sum()),
            "val_photos": val.photos,
            "val_crops": int(val.counts.sum()),
        },
    )


def _loss(predicted: Any, target: Any, photo: Any, config: TrainConfig) -> Any:
    """Squared error, plus RankNet over the pairs of one photo whose MOS differ."""
    import torch

    loss = torch.mean((predicted - target) ** 2)
    if config.rank_weight == 0:
        return loss
    better = (photo[:, None] == photo[None, :]) & (target[:, None] > target[None, :])
    if not bool(better.any()):
        return loss
    margin = (predicted[:, None] - predicted[None, :])[better]
    return loss + config.rank_weight * torch.nn.functional.softplus(-margin).mean()
