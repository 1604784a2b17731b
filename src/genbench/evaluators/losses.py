"""``losses.png``: the run's training curves, read back from its own CSV log (``<run_dir>/csv/metrics.csv``).

One small panel per term, step on x: ``train/<term>`` (blue) and ``val/<term>`` (orange) share a panel, and each
``eval_periodic/<metric>`` (green; logged when ``eval.every_n_epochs`` is set) gets its own. Drawn with Pillow
(:mod:`genbench.panels`), like the latent scatter (matplotlib is not a dependency).

Lightning's CSV log holds a ``train/*`` row every ``trainer.log_every_n_steps`` steps (50 by default: 2-3 rows
for a short run on small data) and a ``val/*`` row per validation. A series with fewer than ``min_points``
values is drawn as dots, not joined into a misleading line; the caption says so and so does
``metrics.json``'s ``skipped["losses"]``. Lower ``trainer.log_every_n_steps`` for denser curves.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

from genbench.drawing import BACKGROUND, with_caption
from genbench.evaluators.base import EvalContext
from genbench.evaluators.pictures import save_picture, to_tensor
from genbench.panels import Panel, Series, render_panel

log = logging.getLogger(__name__)

CSV_PATH = Path("csv") / "metrics.csv"  # conf/logger/csv.yaml: save_dir=${run_dir}, name=csv, version=""
PREFIXES = ("train", "val", "eval_periodic")
COLOURS = {"train": (31, 119, 180), "val": (255, 127, 14), "eval_periodic": (44, 160, 44)}


def read_curves(path: str | Path) -> dict[str, Series]:
    """Every ``train/*``, ``val/*`` and ``eval_periodic/*`` column of a Lightning CSV log, as series over ``step``
    (empty cells, which stand for "not logged on this row", are skipped)."""
    curves: dict[str, Series] = {}
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            try:
                step = float(row.get("step") or "")
            except ValueError:
                continue
            for key, cell in row.items():
                if not key or "/" not in key or key.split("/", 1)[0] not in PREFIXES or cell in (None, ""):
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    continue
                prefix = key.split("/", 1)[0]
                series = curves.setdefault(key, Series(key, colour=COLOURS[prefix], label=prefix))
                if math.isfinite(value):
                    series.points.append((step, value))
                else:
                    series.dropped += 1
    for series in curves.values():
        series.points.sort(key=lambda p: p[0])
    return curves


def panels(curves: dict[str, Series]) -> list[Panel]:
    """Panels in order: the train/val terms (train's order first, then val-only ones), then eval_periodic."""
    terms: dict[str, list[Series]] = {}
    periodic: list[Panel] = []
    for prefix in PREFIXES:
        for key in sorted(k for k in curves if curves[k].prefix == prefix):
            if prefix == "eval_periodic":
                periodic.append(Panel(key, [curves[key]]))
            else:
                terms.setdefault(key.split("/", 1)[1], []).append(curves[key])
    return [Panel(term, series) for term, series in terms.items()] + periodic


def sparse_note(sparse: list[Series], min_points: int, every: int | None) -> str:
    """Which series are too sparse for curves, per prefix, and the setting that makes each denser."""
    why = {
        "train": f"logged every {every} steps: lower trainer.log_every_n_steps"
        if every and every > 1
        else "logged every trainer.log_every_n_steps steps: train longer, or lower it",
        "val": "one per validation: train longer, or validate more often (trainer.check_val_every_n_epoch)",
        "eval_periodic": "one per periodic evaluation: lower eval.every_n_epochs, or train longer",
    }
    parts = []
    for prefix in PREFIXES:
        counts = sorted(len(s.points) for s in sparse if s.prefix == prefix)
        if counts:
            n = str(counts[0]) if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"
            points = "point" if n == "1" else "points"
            parts.append(f"{prefix}/* ({len(counts)} series, {n} {points} each; {why[prefix]})")
    return f"too few points for curves (fewer than {min_points}), drawn as dots: " + ", ".join(parts)


def log_every_n_steps(ctx: EvalContext) -> int | None:
    """``trainer.log_every_n_steps`` of this run: the live trainer's, else the run's config.yaml's."""
    trainer = getattr(ctx.model, "_trainer", None)
    if trainer is not None and getattr(trainer, "log_every_n_steps", None) is not None:
        return int(trainer.log_every_n_steps)
    try:
        import yaml

        return int(yaml.safe_load((ctx.run_dir / "config.yaml").read_text())["trainer"]["log_every_n_steps"])
    except Exception:  # no config, or an unusual one: the caption says less
        return None


def csv_log(ctx: EvalContext) -> Path | None:
    """The run's CSV log, flushed first when a live trainer has a CSV logger (rows logged since its last save)."""
    from pytorch_lightning.loggers import CSVLogger

    trainer = getattr(ctx.model, "_trainer", None)
    for logger in getattr(trainer, "loggers", None) or []:
        if isinstance(logger, CSVLogger):
            logger.save()
            path = Path(logger.log_dir) / "metrics.csv"
            if path.is_file():
                return path
    path = ctx.run_dir / CSV_PATH
    return path if path.is_file() else None


class LossCurves:
    """``losses.png`` from the run's CSV log: one panel per term (see the module docstring), ``columns`` panels
    per row, each ``panel_width`` x ``panel_height`` pixels; series with fewer than ``min_points`` values are
    drawn as dots and recorded in ``skipped["losses"]``. Nothing is drawn without a CSV log (``logger=none``)."""

    def __init__(
        self, min_points: int = 10, columns: int = 3, panel_width: int = 320, panel_height: int = 210
    ) -> None:
        if min_points < 2 or columns < 1:
            raise ValueError(f"need min_points >= 2 and columns >= 1, got {min_points}, {columns}")
        self.min_points, self.columns = min_points, columns
        self.panel_width, self.panel_height = panel_width, panel_height

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        from PIL import Image

        def skip(reason: str) -> None:
            ctx.records.setdefault("skipped", {})["losses"] = reason

        path = csv_log(ctx)
        if path is None:
            skip(f"no CSV log at {CSV_PATH} (logger=csv writes one): losses.png not drawn")
            log.info("losses.png skipped: no CSV log at %s", CSV_PATH)
            return {}
        shown_path = path.relative_to(ctx.run_dir) if path.is_relative_to(ctx.run_dir) else path
        chosen = panels(read_curves(path))
        if not chosen:
            skip(f"no train/, val/ or eval_periodic/ values in {shown_path}: losses.png not drawn")
            log.info("losses.png skipped: no curves in %s", path)
            return {}
        every = log_every_n_steps(ctx)
        sparse = [s for p in chosen for s in p.series if len(s.points) < self.min_points]
        dropped = sum(s.dropped for p in chosen for s in p.series)
        columns = min(self.columns, len(chosen))
        rows = math.ceil(len(chosen) / columns)
        body = Image.new("RGB", (columns * self.panel_width, rows * self.panel_height), BACKGROUND)
        for i, panel in enumerate(chosen):
            tile = render_panel(panel, self.min_points, self.panel_width, self.panel_height)
            body.paste(tile, ((i % columns) * self.panel_width, (i // columns) * self.panel_height))
        cadence = "every step" if every == 1 else f"every {every} steps" if every else "every n steps"
        cadence += " (trainer.log_every_n_steps)"
        shown = {s.prefix for p in chosen for s in p.series}
        kinds = [
            f"train/* (blue, logged {cadence})" if "train" in shown else "",
            "val/* (orange, per validation)" if "val" in shown else "",
            "eval_periodic/* (green, every eval.every_n_epochs epochs)" if "eval_periodic" in shown else "",
        ]
        caption = (
            f"training curves from {shown_path}, step on x: "
            + ", ".join(k for k in kinds if k)
            + "; legend: last value."
        )
        if sparse:
            note = sparse_note(sparse, self.min_points, every)
            skip(note)
            caption += f"\n{note}."
        if dropped:
            caption += f"\n{dropped} non-finite values (NaN/inf) not drawn."
        save_picture(ctx, "losses", to_tensor(with_caption(body, caption)))
        return {}
