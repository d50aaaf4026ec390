"""``cropper eval compare``: the metrics of several ``eval crop`` runs in one table.

Each run folder's ``metrics.json`` gives its metrics, its settings (method, model, bank,
options) and how it was measured: its protocol (:mod:`cropper.evaluation.protocol`) and
its split (dataset, split and the set of photos measured). Two figures of one metric are
comparable only when their runs agree on both. Where the runs of a column do not all
agree, every figure in it is marked with its group (``†1``, ``†2``, ...): figures of one
group were measured alike, and the notes under the table say how each group differs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cropper.core.errors import ConfigError
from cropper.data.metrics import score_keys
from cropper.evaluation import protocol
from cropper.evaluation.report import format_metric

#: The metrics the Markdown table shows, in order, where any run has them (the JSON has all).
SHOWN = ("iou", "bde", "iou_top_k", "acc5", "acc10", "wacc5", "wacc10", "srcc", "pcc")
#: Settings a run's row names, where it records them.
_MODEL_KEYS = ("vlm", "index", "clip", "head")
_OPTION_KEYS = ("prompts", "score_weights")
#: The split of a run made before cropper recorded which photos it measured.
UNRECORDED = protocol.UNRECORDED


@dataclass(frozen=True)
class Run:
    """One run folder's record, as ``eval crop`` wrote it to ``metrics.json``."""

    name: str  # the folder, as given
    record: Mapping[str, Any]

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.record.get("metrics", {}))

    @property
    def protocol(self) -> Mapping[str, Any] | None:
        return self.record.get("protocol")

    @property
    def split(self) -> dict[str, Any]:
        """What photos it measured: dataset, split, and the set's digest (and its size)."""
        return {
            "dataset": self.record.get("dataset", UNRECORDED),
            "split": self.record.get("split") or "all",
            "photo_set": self.record.get("photo_set", UNRECORDED),
            "photos": self.record.get("measured"),
        }

    def settings(self) -> dict[str, Any]:
        """The run's method, model, bank and options, as a row names them."""
        out: dict[str, Any] = {"method": self.record.get("method", "?")}
        out |= {key: self.record[key] for key in _MODEL_KEYS if key in self.record}
        options = {key: self.record[key] for key in _OPTION_KEYS if key in self.record}
        options |= _changed_config(self.record.get("config"))
        out["options"] = options
        return out


def load_run(folder: str | os.PathLike) -> Run:
    """The run in ``folder``; one line of :class:`ConfigError` when it is not a run."""
    path = Path(folder).expanduser() / "metrics.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{folder}: no metrics.json: give folders that cropper eval crop wrote (its --out)"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc}): run cropper eval crop again") from None
    if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
        raise ConfigError(f'{path}: not the metrics.json of an eval crop run (no "metrics")')
    return Run(str(folder), record)


def compare_runs(folders: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """The comparison of the runs in ``folders``: rows, marks and notes, as JSON.

    ``runs`` holds each run's settings, protocol, split, metrics and ``marks`` (metric ->
    the group its figure belongs to, where a column mixes groups); ``groups`` says, for each
    such metric, what each group was measured by.
    """
    if not folders:
        raise ConfigError("give at least one run folder to compare")
    runs = [load_run(folder) for folder in folders]
    keys = _metric_order(runs)
    marks: dict[str, dict[str, int]] = {run.name: {} for run in runs}
    groups: dict[str, list[dict[str, Any]]] = {}
    for key in keys:
        having = [run for run in runs if key in run.metrics]
        found: list[dict[str, Any]] = []
        for run in having:
            how = {"protocol": protocol.for_metric(run.protocol, key), "split": _split_key(run)}
            group = next((g for g in found if g["how"] == how), None)
            if group is None:
                group = {"how": how, "runs": []}
                found.append(group)
            group["runs"].append(run.name)
        if len(found) > 1:
            groups[key] = [{**g["how"], "runs": g["runs"]} for g in found]
            for number, group in enumerate(found, start=1):
                for name in group["runs"]:
                    marks[name][key] = number
    return {
        "metrics": keys,
        "runs": [
            {
                "run": run.name,
                **run.settings(),
                "protocol": run.protocol or UNRECORDED,
                "split": run.split,
                "metrics": run.metrics,
                "marks": marks[run.name],
            }
            for run in runs
        ],
        "groups": groups,
    }


def markdown(comparison: Mapping[str, Any]) -> str:
    """The comparison as a Markdown table, with notes on the marked figures."""
    shown = [key for key in SHOWN if key in comparison["metrics"]]
    header = ["run", "method", "model", "bank", "options", "protocol", "split", *shown]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in comparison["runs"]:
        cells = [
            row["run"],
            str(row["method"]),
            _model(row),
            str(row.get("index", "")),
            _options(row["options"]),
            _protocol(row["protocol"]),
            _split(row["split"]),
        ]
        for key in shown:
            value = row["metrics"].get(key)
            mark = row["marks"].get(key)
            cells.append(format_metric(key, value) + (f" †{mark}" if mark else ""))
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines += ["", "Acc and wAcc in percent."]
    marked = {k: v for k, v in comparison["groups"].items() if k in shown}
    if marked:
        lines += ["", "Marked figures were measured differently; compare only figures with "
                  "the same mark:"]  # fmt: skip
        for key, found in marked.items():
            parts = [f"†{n} {_how(g, key)}" for n, g in enumerate(found, start=1)]
            lines.append(f"- {key}: " + "; ".join(parts))
    protocols = [row["protocol"] for row in comparison["runs"]]
    legend = protocol.legend([p if isinstance(p, dict) else None for p in protocols])
    if legend:
        lines += ["", "Protocols (task · box metrics · ranking):", *legend]
    return "\n".join(lines) + "\n"


# -- helpers ---------------------------------------------------------------------------------


def _metric_order(runs: Sequence[Run]) -> list[str]:
    """Every metric any run has: box metrics, then the ranking ones, then any others."""
    every = {key for run in runs for key in run.metrics}
    order = ["iou", "bde", "iou_top_k", *score_keys()]
    return [k for k in order if k in every] + sorted(every - set(order))


def _split_key(run: Run) -> dict[str, Any]:
    split = run.split
    return {k: split[k] for k in ("dataset", "split", "photo_set")}


def _changed_config(config: Any) -> dict[str, Any]:
    """The loop settings a run changed from the defaults (a baseline has none)."""
    if not isinstance(config, dict):
        return {}
    from cropper.agent.loop import CropConfig

    defaults = {f.name: f.default for f in dataclasses.fields(CropConfig)}
    return {
        key: value
        for key, value in config.items()
        if key in defaults and defaults[key] is not dataclasses.MISSING and value != defaults[key]
    }


def _model(row: Mapping[str, Any]) -> str:
    parts = [f"{key} {row[key]}" for key in ("vlm", "clip", "head") if key in row]
    return ", ".join(parts)


def _options(options: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"


def _protocol(value: Any) -> str:
    if not isinstance(value, dict):
        return UNRECORDED
    return " · ".join(str(value.get(k) or "-") for k in ("task", "box_metrics", "ranking"))


def _split(split: Mapping[str, Any]) -> str:
    photos = split.get("photos")
    return f"{split['dataset']} {split['split']}" + (f" ({photos} photos)" if photos else "")


def _how(group: Mapping[str, Any], key: str) -> str:
    """How one group of a column was measured: its protocol and its split."""
    split = group["split"]
    where = f"{split['dataset']} {split['split']}, photo set {split['photo_set']}"
    return f"{protocol.label(group['protocol'], key)} on {where} ({', '.join(group['runs'])})"
