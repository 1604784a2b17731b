"""The printed summary of a benchmark result: one table per section, each ratio marked against its target."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Column = tuple[str, Callable[[dict[str, Any]], str]]


def _fmt(value: Any, spec: str = ".0f") -> str:
    return "n/a" if value is None else format(value, spec)


def _get(record: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(record, dict) or key not in record:
            return None
        record = record[key]
    return record


def _memory(memory: dict[str, Any] | None) -> str:
    return "n/a" if not memory else f"{memory['peak_mib']:.0f} (+{memory['increase_mib']:.0f})"


def _speedup(base: dict[str, Any], other: dict[str, Any]) -> float | None:
    if "step_ms_median" in base and "step_ms_median" in other:
        return base["step_ms_median"] / other["step_ms_median"]
    return None


def _checked(ratio: float | None, limit: float, at_most: bool, spec: str = ".2f") -> str:
    """The ratio and whether it meets its target."""
    if ratio is None:
        return "n/a"
    return f"{ratio:{spec}} " + ("ok" if (ratio <= limit if at_most else ratio >= limit) else "MISS")


def _resident(record: dict[str, Any], targets: dict[str, Any]) -> str:
    """A training cell's device-resident speed-up, checked where the target names its (model, size)."""
    ratio = record["resident_over_dataloader"]
    if [record["model"], record["size"]] in targets.get("resident_over_dataloader_cells", []):
        return _checked(ratio, targets["resident_over_dataloader_min"], False)
    return _fmt(ratio, ".2f")


def _table(title: str, columns: list[Column], records: list[dict[str, Any]]) -> str:
    rows = [[cell(r) for _, cell in columns] for r in records]
    headers = [h for h, _ in columns]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:  # first column left-aligned, numbers right-aligned
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join(["", title, line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def format_tables(result: dict[str, Any]) -> str:
    meta, targets = result["meta"], result["targets"]
    lp, rd, fid = (
        targets["lightning_over_plain_max"],
        targets["resident_over_dataloader_min"],
        targets["fid_over_torch_fidelity_max"],
    )
    out = [
        f"genbench bench on {meta['device']} ({meta['device_name']}, {meta['torch_threads']} threads, load average "
        f"{meta['load_average_start']} -> {meta.get('load_average_end')}), batch {meta['batch_size']}, "
        f"{meta['warmup']} warm-up + {meta['steps']} timed steps x {meta['repeats']}, data: {meta['data']}"
    ]
    training_columns: list[Column] = [
        ("model", lambda r: r["model"]),
        ("px", lambda r: str(r["size"])),
        ("lightning", lambda r: _fmt(_get(r, "lightning", "images_per_s"))),
        ("plain", lambda r: _fmt(_get(r, "plain", "images_per_s"))),
        (f"L/plain (<={lp})", lambda r: _checked(r["lightning_over_plain"], lp, True, ".3f")),
        ("dataloader", lambda r: _fmt(_get(r, "dataloader", "images_per_s"))),
        (f"resident/DL (>={rd}*)", lambda r: _resident(r, targets)),
        ("L ms", lambda r: _fmt(_get(r, "lightning", "step_ms_median"), ".1f")),
        ("plain ms", lambda r: _fmt(_get(r, "plain", "step_ms_median"), ".1f")),
        ("L MiB (+inc)", lambda r: _memory(_get(r, "lightning", "memory"))),
        ("plain MiB (+inc)", lambda r: _memory(_get(r, "plain", "memory"))),
        ("samples/s", lambda r: _fmt(_get(r, "sampling", "samples_per_s"))),
    ]
    cells = ", ".join(f"{m} {s} px" for m, s in targets.get("resident_over_dataloader_cells", []))
    title = f"Training (images/s; ratios of median step times; * resident/DL target checked on {cells})"
    out.append(_table(title, training_columns, result["training"]))
    data_columns: list[Column] = [
        ("px", lambda d: str(d["size"])),
        ("resident", lambda d: _fmt(_get(d, "resident", "images_per_s"))),
        ("dataloader", lambda d: _fmt(_get(d, "dataloader", "images_per_s"))),
        (f"resident/DL (>={rd})", lambda d: _checked(d["resident_over_dataloader"], rd, False)),
    ]
    title = "Data path alone (loader + transfer + on_after_batch_transfer, images/s)"
    out.append(_table(title, data_columns, result["data_path"]))
    eval_columns: list[Column] = [
        ("px", lambda e: str(e["size"])),
        ("images", lambda e: _fmt(e.get("images"))),
        ("features/s", lambda e: _fmt(e.get("features_per_s"))),
        ("genbench FID s", lambda e: _fmt(e.get("fid_seconds"), ".3f")),
        ("torch-fidelity s", lambda e: _fmt(e.get("torch_fidelity_seconds"), ".3f")),
        ("t-f metric-only s", lambda e: _fmt(e.get("torch_fidelity_metric_only_seconds"), ".3f")),
        (f"ratio (<={fid})", lambda e: _checked(e.get("fid_over_torch_fidelity"), fid, True)),
        (
            "FID genbench / t-f",
            lambda e: f"{_fmt(e.get('fid'), '.4g')} / {_fmt(e.get('torch_fidelity_fid'), '.4g')}",
        ),
        ("Inception feat/s", lambda e: _fmt(_get(e, "inception", "features_per_s"))),
    ]
    title = "Evaluation from float images on the device (SmallCNN features, registered with torch-fidelity)"
    out.append(_table(title, eval_columns, result["evaluation"]))
    variants = [
        {
            "model": r["model"],
            "size": r["size"],
            "variant": name,
            "stats": stats,
            "fp32": r["gpu_variants"]["fp32"],
        }
        for r in result["training"]
        for name, stats in (r.get("gpu_variants") or {}).items()
    ]
    if variants:
        gpu_columns: list[Column] = [
            ("model", lambda v: v["model"]),
            ("px", lambda v: str(v["size"])),
            ("variant", lambda v: v["variant"]),
            ("images/s", lambda v: _fmt(_get(v, "stats", "images_per_s"))),
            ("x fp32", lambda v: _fmt(_speedup(v["fp32"], v["stats"]), ".2f")),
            ("peak MiB", lambda v: _fmt(_get(v, "stats", "memory", "peak_mib"))),
        ]
        title = f"Speed switches on {meta['device']} (Lightning path; x fp32 = speed-up)"
        out.append(_table(title, gpu_columns, variants))
    elif meta["device"] == "cpu":
        out += [
            "",
            "GPU switches (bf16 autocast, channels_last, torch.compile): not run on CPU unless named in "
            "--gpu-variants",
        ]
    glann = result.get("glann_mnist_glo") or {}
    if "total_hours_estimate" in glann:
        out += [
            "",
            f"GLANN MNIST GLO, {glann['epochs']} epochs x {glann['batches_per_epoch']} batches on {glann['device']}: "
            f"{glann['images_per_s']:.0f} images/s, {glann['epoch_seconds_estimate']:.1f} s/epoch, "
            f"~{glann['total_hours_estimate']:.2f} h (estimated; excludes {glann['excludes']})",
        ]
    protocol = result.get("eval_protocol") or {}
    if protocol.get("rows"):
        from genbench.bench.eval_protocol import format_eval_protocol

        out += ["", format_eval_protocol(protocol)]
    if result["skipped"]:
        out += ["", "Skipped:", *(f"  {n}" for n in result["skipped"])]
    inception = [
        e["inception"]["skipped"] for e in result["evaluation"] if "skipped" in (e.get("inception") or {})
    ]
    if inception:
        out += ["", f"Inception not timed: {inception[0]}"]
    return "\n".join(out)
