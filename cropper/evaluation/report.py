"""The report folder of ``cropper eval crop``: metrics, a table beside the paper, pictures.

Files written (each atomically):

- ``metrics.json``: the metrics, the counts and the run's settings;
- ``report.md``: the metrics in a table beside the published numbers measured the same
  way (:mod:`cropper.evaluation.protocol`), each row naming its protocol;
- ``iou_hist.png``: a histogram of the per-photo IoU;
- ``gallery_best.png`` / ``gallery_worst.png``: the photos with the highest and lowest
  IoU, the true crops drawn in green and the predicted crop in red.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from cropper.core.boxes import Box
from cropper.core.errors import ImageError
from cropper.core.fileio import save_image, write_text
from cropper.evaluation import protocol
from cropper.evaluation.harness import PhotoScore
from cropper.evaluation.protocol import BOX_RULE
from cropper.views import drawing

log = logging.getLogger(__name__)

#: Published results per dataset: method -> metric -> value. Acc as percentages, as the
#: papers print them; see /shared/data/README.md and the Cropper paper (CVPR 2025).
PUBLISHED: dict[str, dict[str, dict[str, float]]] = {
    "gaicd": {
        "Cropper, Gemini 1.5 Pro (paper)": {
            "acc1_5": 88.9,
            "acc4_5": 79.4,
            "acc5": 84.3,
            "acc1_10": 98.2,
            "acc10": 96.5,
            "srcc": 0.904,
            "pcc": 0.860,
        },
        "Cropper, Mantis-8B-Idefics2 (paper)": {"acc5": 80.2},
        "Wang et al., CVPR 2023 (trained)": {
            "acc5": 64.8,
            "acc10": 83.3,
            "srcc": 0.872,
            "pcc": 0.893,
        },
    },
    "fcdb": {"Cropper, Gemini 1.5 Pro (paper)": {"iou": 0.756, "bde": 0.053}},
    "sacd": {
        "Cropper, Gemini 1.5 Pro (paper)": {"iou": 0.769, "bde": 0.0372},
        "SAC-Net (trained)": {"iou": 0.767, "bde": 0.0491},
    },
    "flms": {
        "CACNet (trained)": {"iou": 0.854, "bde": 0.033},
        "a fine-tuned 7B VLM (2026)": {"iou": 0.871},
    },
}

#: How the published numbers of each dataset were measured (see protocol.py): GAICD's by
#: scoring every annotated crop with the method's own model; the box metrics on FCDB and
#: SACD (one ground truth a photo, so the rule for several does not matter) and on FLMS
#: (CACNet's reference code, whose rule cropper follows).
PUBLISHED_PROTOCOLS: dict[str, dict[str, Any]] = {
    "gaicd": {"task": "free", "ranking": "scorer"},
    "fcdb": {"task": "aspect", "box_metrics": BOX_RULE},
    "sacd": {"task": "subject", "box_metrics": BOX_RULE},
    "flms": {"task": "free", "box_metrics": BOX_RULE},
}

#: The photos the published numbers were measured over: the split and its size.
PUBLISHED_SPLITS: dict[str, tuple[str, int]] = {
    "gaicd": ("test", 200),
    "fcdb": ("test", 345),
    "flms": ("all", 500),
}

#: Metrics printed as percentages (the papers' convention); the rest as they are.
_PERCENT_PREFIXES = ("acc", "wacc")
_THUMB_SIDE = 320


def write_report(
    folder: str | Path,
    summary: Mapping[str, float],
    scored: Sequence[PhotoScore],
    *,
    settings: Mapping[str, Any],
    gallery: int = 6,
) -> dict[str, Any]:
    """Write the report files into ``folder``; returns what ``metrics.json`` holds."""
    out = Path(folder)
    report = {"metrics": dict(summary), **settings}
    write_text(out / "metrics.json", json.dumps(report, indent=2) + "\n")
    write_text(out / "report.md", markdown_table(summary, settings))
    ious = [s.values["iou"] for s in scored]
    save_image(iou_histogram(ious), out / "iou_hist.png")
    ranked = sorted(scored, key=lambda s: s.values["iou"], reverse=True)
    for name, chosen in (("best", ranked[:gallery]), ("worst", ranked[::-1][:gallery])):
        sheet = gallery_sheet(chosen)
        if sheet is not None:
            save_image(sheet, out / f"gallery_{name}.png")
    return report


def markdown_table(summary: Mapping[str, float], settings: Mapping[str, Any]) -> str:
    """The run's metrics beside each published method's, with the run's settings above.

    A published figure stands beside the run's only when it was measured by the same
    protocol; the others are named below the table, with the reason. Each row says the
    protocol the run's figure was measured by.
    """
    dataset = str(settings.get("dataset", ""))
    published = PUBLISHED.get(dataset, {})
    theirs = PUBLISHED_PROTOCOLS.get(dataset)
    ours = settings.get("protocol")
    split = settings.get("split") or "all photos"
    lines = [f"# {settings.get('method', 'cropper')} on {dataset} ({split})", ""]
    lines += [
        f"- {key}: {_setting(value)}"
        for key, value in settings.items()
        if key not in ("dataset", "split")
    ]
    lines += ["", "Acc and wAcc in percent. Protocol: see `cropper eval crop --help`.", ""]
    header = ["metric", "protocol", "this run", *published]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    withheld: list[str] = []
    for key, value in summary.items():
        cells = [key, protocol.label(ours, key), format_metric(key, value)]
        comparable = protocol.same(ours, theirs, key)
        for method, table in published.items():
            if key in table and not comparable:
                withheld.append(f"{method} {key} ({protocol.label(theirs, key)})")
            shown = table.get(key) if comparable else None
            cells.append(format_metric(key, shown, given_percent=True))
        lines.append("| " + " | ".join(cells) + " |")
    if withheld:
        lines += [
            "",
            "Not set beside this run, as measured by another protocol: " + "; ".join(withheld)
            + ".",
        ]  # fmt: skip
    where = PUBLISHED_SPLITS.get(dataset)
    measured = settings.get("measured")
    if published and where and measured is not None and measured != where[1]:
        lines += [
            "",
            f"The published figures are over {dataset}'s {where[0]} photos ({where[1]}); this "
            f"run measured {measured} ({split}), so even figures of one protocol are not the "
            "same measurement.",
        ]
    lines += ["", "Protocols (task · rule):", *protocol.legend([ours, theirs])]
    return "\n".join(lines) + "\n"


def _setting(value: Any) -> str:
    if isinstance(value, list):
        return f"{len(value)}" + "".join(f"\n  - {item}" for item in value)
    return json.dumps(value) if isinstance(value, dict) else str(value)


def format_metric(key: str, value: float | None, *, given_percent: bool = False) -> str:
    """``value`` as reports print ``key``: Acc and wAcc in percent, BDE to 4 places."""
    if value is None:
        return ""
    if key.startswith(_PERCENT_PREFIXES):
        return f"{value if given_percent else 100 * value:.1f}"
    return f"{value:.4f}" if key == "bde" else f"{value:.3f}"


def iou_histogram(values: Sequence[float], bins: int = 20, size=(640, 360)) -> Image.Image:
    """A bar chart of ``values`` in [0, 1], ``bins`` equal bins, counts labelled on the axis."""
    counts, _ = np.histogram(np.clip(values, 0, 1), bins=bins, range=(0.0, 1.0))
    width, height = size
    left, bottom, top, right = 48, 36, 24, 16
    chart = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(chart)
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(int(counts.max()), 1)
    bar_w = plot_w / bins
    for i, count in enumerate(counts):
        x0 = left + i * bar_w
        y0 = top + plot_h * (1 - count / peak)
        draw.rectangle((x0 + 1, y0, x0 + bar_w - 1, top + plot_h), fill=(70, 120, 200))
    draw.line((left, top + plot_h, left + plot_w, top + plot_h), fill="black")
    draw.line((left, top, left, top + plot_h), fill="black")
    for tick in range(0, 11, 2):
        x = left + plot_w * tick / 10
        draw.text((x - 8, top + plot_h + 4), f"{tick / 10:.1f}", fill="black")
    draw.text((4, top - 4), str(peak), fill="black")
    draw.text((8, top + plot_h - 10), "0", fill="black")
    draw.text((left + plot_w / 2 - 60, height - 16), f"IoU ({len(values)} photos)", fill="black")
    return chart


def gallery_sheet(scored: Sequence[PhotoScore], columns: int = 3) -> Image.Image | None:
    """Thumbnails with true (green) and predicted (red) crops; ``None`` if none could be read."""
    from cropper.core.images import fit_within, load_image

    tiles = []
    for item in scored:
        try:
            photo = fit_within(load_image(item.photo.path), _THUMB_SIDE)
        except ImageError as exc:  # a photo gone since the run: leave it out of the picture
            log.warning("gallery: %s", exc)
            continue
        drawn = drawing.draw_boxes(photo, item.photo.truths, drawing.TRUTH)
        predicted = Box.from_pixels(item.box, item.photo.size)
        drawn = drawing.draw_boxes(drawn, [predicted], drawing.PREDICTION)
        tiles.append(drawing.caption(drawn, f"{item.photo.name}  IoU {item.values['iou']:.3f}"))
    return drawing.tile(tiles, columns) if tiles else None
