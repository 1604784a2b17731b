"""The results renderer on hand-made run directories: 2 models x 2 seeds x 2 samplers (and a hostile model name),
with curves and tiny sample pictures; the numbers expected are worked out by hand."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

import pytest
from PIL import Image

from genbench.results.__main__ import main
from genbench.results.figures import CELL_PX, GAP_PX
from genbench.results.layout import LayoutError, load_layout, parse_layout

HOSTILE = "<script>alert(1)</script>"
FID = {("vae", 0): 10.0, ("vae", 1): 14.0, ("glo", 0): 20.0, ("glo", 1): 30.0}  # @prior; @gmm is 5 more
COLOURS = {"vae": "green", "glo": "blue"}


def curve(seed: int) -> dict:
    """Epochs 1 and 2 at 10 * epoch + seed seconds; FID 50 - 10 * epoch + seed, recall 0.1 * epoch."""
    points = [
        {
            "epoch": e,
            "batches_seen": 10 * e,
            "images_seen": 1000 * e,
            "train_loop_seconds": 10.0 * e + seed,
            "values": {"fid_classifier@prior": 50.0 - 10 * e + seed, "recall_classifier@prior": 0.1 * e},
        }
        for e in (1, 2)
    ]
    return {"points": points, "protocols": {"fid_classifier@prior": {"n_gen": 100, "n_ref": 100}}}


def record(model: str, seed: int) -> dict:
    fid = FID[(model, seed)]
    protocol = {"n_gen": 1000, "n_ref": 1000, "feature_extractor": "classifier"}
    return {
        "status": "finished",
        "data": "mnist",
        "model": model,
        "seed": seed,
        "sampler": "prior",
        "image_size": 28,
        "n_train_images": 60000,
        "fid_classifier@prior": fid,
        "fid_classifier@gmm": fid + 5,
        "recall_classifier@prior": 0.5,
        "recall_classifier@gmm": 0.25 + 0.5 * seed,
        "recon_mse_test": 0.01 + 0.02 * seed,
        "recon_psnr_test": 20.0,
        "train_seconds": 100.0 + seed,
        "protocols": {
            **{
                f"{m}@{s}": protocol
                for m in ("fid_classifier", "recall_classifier")
                for s in ("prior", "gmm")
            },
            "recon_mse_test": {"split": "test", "n_images": 500},
        },
        "versions": {"python": "3.12.3", "torch": "2.4.1"},
        "machine": {"platform": "Linux-test", "processor": "TestCPU", "cpu_count": 2, "torch_threads": 1},
        "git_commit": "abc1234",
        "curve": curve(seed),
    }


def write_run(path: Path, metrics: dict | str, pictures: dict[str, tuple[int, str]] | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    for name, (side, colour) in (pictures or {}).items():
        Image.new("RGB", (side, side), colour).save(path / name)
    return path


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "outputs" / "digits"
    for (model, seed), _ in FID.items():
        write_run(
            root / model / f"seed{seed}",
            record(model, seed),
            {"samples.png": (60, COLOURS[model]), "samples_gmm.png": (30, "red")},
        )
    # glo seed 1's curve also holds points of the wrong type and NaN: skipped, the good points kept
    bad = record("glo", 1)
    bad["curve"]["points"] += [
        {"epoch": "three", "train_loop_seconds": 30.0, "values": {}},
        {"epoch": 3, "train_loop_seconds": math.nan, "values": {"fid_classifier@prior": 1.0}},
        {"epoch": 4, "train_loop_seconds": 40.0, "values": {"fid_classifier@prior": math.nan}},
        ["not", "a", "point"],
    ]
    bad["flags"] = {"sample_collapse_classifier@gmm": "recall 0.01 of the reconstructions' 0.6"}
    (root / "glo" / "seed1" / "metrics.json").write_text(json.dumps(bad))
    hostile = {**record("vae", 0), "model": HOSTILE, "curve": "garbage"}
    write_run(root / "hostile", hostile)
    write_run(root / "corrupt", '{"status": "finished", "data": ')
    return tmp_path


LAYOUT = """\
title: "genbench results: test"
intro: "Two models on *MNIST*."
commands: ["make results", "python -m genbench -m model=vae,glo seed=0,1"]
sections:
  - id: digits
    title: "Digits: two models, two samplers"
    roots: [outputs/digits]
    samples_figure: true
    curves: [fid_classifier, recall_classifier]
    compare: {title: "Figure 4", metrics: [recon_mse_test, fid_classifier], models: [glo, vae, missing]}
"""


def render(tmp_path: Path, monkeypatch, layout: str = LAYOUT) -> Path:
    (tmp_path / "layout.yaml").write_text(layout)
    monkeypatch.chdir(tmp_path)
    assert main(["--layout", "layout.yaml", "--out", "results"]) == 0
    return tmp_path / "results"


@pytest.fixture
def rendered(runs: Path, monkeypatch, caplog) -> tuple[Path, str, list[str]]:
    with caplog.at_level(logging.WARNING):
        out = render(runs, monkeypatch)
    return out, (out / "README.md").read_text(encoding="utf-8"), [r.getMessage() for r in caplog.records]


def test_readme_tables_hold_mean_and_sample_std_over_seeds(rendered):
    _, readme, _ = rendered
    # FID@prior: vae 10, 14 -> 12 ± 2.828 (std of two values: |a - b| / sqrt 2); recall@prior 0.5 both: ± 0
    assert "| vae | prior | 2 | 12 ± 2.828 | 0.5 ± 0 |" in readme
    assert "| glo | prior | 2 | 25 ± 7.071 | 0.5 ± 0 |" in readme
    assert "| glo | gmm | 2 | 30 ± 7.071 | 0.5 ± 0.3536 |" in readme  # recall 0.25, 0.75
    # per model, whatever the sampler: recon MSE 0.01, 0.03; PSNR 20; train s 100, 101 (once per model)
    assert "| vae | prior | 2 | 0.02 ± 0.01414 | 20 ± 0 | 100.5 ± 0.7071 |" in readme
    assert readme.count("100.5 ± 0.7071") == 2  # vae and glo rows of the per-model table, not per sampler
    assert (
        "FID (classifier) ↓" in readme and "recall (classifier) ↑" in readme and "recon PSNR test ↑" in readme
    )


def test_readme_states_protocols_data_provenance_and_commands(rendered):
    _, readme, _ = rendered
    assert "Protocol: n_gen=1000, n_ref=1000, feature_extractor=classifier" in readme
    assert "recon_mse_test: n_images=500, split=test" in readme
    assert "### mnist (28×28 px, 60,000 training images)" in readme
    assert "Linux-test, TestCPU, 2 CPUs, 1 torch threads (5 of 5 runs)" in readme
    assert "python 3.12.3, torch 2.4.1 (5 of 5 runs)" in readme and "abc1234" in readme
    assert "```sh\nmake results\npython -m genbench -m model=vae,glo seed=0,1\n```" in readme
    assert "Two models on *MNIST*." in readme  # the intro is the author's Markdown
    assert "[results.csv](results.csv)" in readme and "[index.html](index.html)" in readme
    assert "![samples of mnist](samples_digits_mnist.png)" in readme
    assert "sample_collapse_classifier@gmm: recall 0.01" in readme  # the run's flag, with its run


def test_quality_and_compare_tables(rendered):
    _, readme, _ = rendered
    # last points: epoch 2 at 20 + seed s, FID 30 + seed, recall 0.2; glo seed 1's bad points left out
    assert "| vae | prior | 2 | 2 | 2000 ± 0 | 20.5 ± 0.7071 | 30.5 ± 0.7071 | 0.2 ± 0 |" in readme
    assert "| glo | prior | 2 | 2 | 2000 ± 0 | 20.5 ± 0.7071 | 30.5 ± 0.7071 | 0.2 ± 0 |" in readme
    assert "fid_classifier: n_gen=100, n_ref=100" in readme  # the curve's own (small) protocol
    compare = readme[readme.index("Comparison: Figure 4") :]
    assert compare.index("| glo | 2 | 0.02 ± 0.01414 | 25 ± 7.071 |") < compare.index("| vae | 2 |")
    assert "| missing | 0 |" in compare and "missing: no finished run on mnist" in compare


def test_problems_and_skipped_curve_points_are_listed_not_fatal(rendered):
    _, readme, warnings = rendered
    problems = readme[readme.index("## Failed or unfinished runs") :]
    assert "corrupt" in problems and "outputs/digits/corrupt" in problems
    bad = [w for w in warnings if "glo/seed1" in w and "curve point" in w]
    assert len(bad) == 4, bad  # a word for an epoch, a NaN time, a NaN value, a list
    assert any("epoch: expected a whole number" in w for w in bad)
    assert any("train_loop_seconds: expected a finite number" in w for w in bad)
    assert any("fid_classifier@prior: expected a finite number, got float NaN" in w for w in bad)
    assert any("hostile" in w and "curve: expected" in w for w in warnings)
    assert "## Warnings" in readme and "curve point 2" in readme


def test_files_written_and_readable(rendered):
    out, _, _ = rendered
    Image.new("RGB", (4, 4)).save(out / "samples_gone_mnist.png")  # from an earlier layout: removed next time
    assert main(["--layout", "layout.yaml", "--out", "results"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "curves_digits_mnist.png",
        "index.html",
        "results.csv",
        "samples_digits_mnist.png",
    ]
    with Image.open(out / "samples_digits_mnist.png") as samples:
        samples.load()
        # columns gmm, prior; rows: the hostile name, glo, vae; pictures scaled to CELL_PX wide
        assert samples.width == GAP_PX + 2 * (CELL_PX + GAP_PX)
        assert samples.height > 3 * CELL_PX
        cell_x = GAP_PX + CELL_PX + GAP_PX + CELL_PX // 2  # the prior column
        colours = {samples.convert("RGB").getpixel((cell_x, y)) for y in range(samples.height)}
        assert {(0, 128, 0), (0, 0, 255)} <= colours  # vae's and glo's own samples.png
    with Image.open(out / "curves_digits_mnist.png") as curves:
        assert curves.width == 2 * 420 and 260 < curves.height < samples.height  # two panels side by side
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text(encoding="utf-8"))))
    assert len(rows) == 2 * 2 + 2  # (vae, glo) x (prior, gmm) and the hostile model's two samplers
    vae = next(r for r in rows if r["model"] == "vae" and r["sampler"] == "prior")
    assert float(vae["fid_classifier_mean"]) == 12.0 and vae["n"] == "2"
    assert math.isclose(float(vae["fid_classifier_std"]), math.sqrt(8))


def test_hostile_model_name_is_escaped(rendered):
    out, readme, _ = rendered
    page = (out / "index.html").read_text(encoding="utf-8")
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert HOSTILE not in readme and "&lt;script&gt;alert(1)&lt;/script&gt;" in readme
    assert len(page.encode()) < 3 * 2**20


def test_layout_unknown_key_is_a_one_line_error_naming_it(tmp_path, monkeypatch, capsys):
    bad = LAYOUT.replace("    samples_figure: true\n", "    samples_figure: true\n    colour: red\n")
    with pytest.raises(SystemExit) as exit_info:
        render(tmp_path, monkeypatch, bad)
    message = str(exit_info.value.code)
    assert "unknown key 'colour'" in message and "sections[0] (digits)" in message and "\n" not in message
    with pytest.raises(LayoutError, match="unknown key 'subtitle'"):
        parse_layout({"title": "t", "subtitle": "s", "sections": []})
    with pytest.raises(LayoutError, match="missing key 'roots'"):
        parse_layout({"title": "t", "sections": [{"id": "a", "title": "A"}]})
    with pytest.raises(LayoutError, match="samples_figure must be true or false"):
        parse_layout(
            {"title": "t", "sections": [{"id": "a", "title": "A", "roots": ["x"], "samples_figure": 1}]}
        )


def test_missing_root_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        render(tmp_path, monkeypatch)  # no outputs/digits here
    assert "run root outputs/digits does not exist" in str(exit_info.value.code)
    assert not (tmp_path / "results").exists()


def test_layout_defaults(tmp_path):
    (tmp_path / "layout.yaml").write_text(
        "title: t\nsections:\n  - {id: a-1, title: A, roots: [x], columns: null}\n"
    )
    layout = load_layout(tmp_path / "layout.yaml")
    section = layout.sections[0]
    assert (layout.intro, layout.commands) == ("", ())
    assert (section.samples_figure, section.curves, section.columns, section.compare) == (
        False,
        (),
        None,
        None,
    )


def test_page_sample_grids_shrink_to_fit_the_size_budget(runs, monkeypatch, caplog):
    from genbench.results import build

    monkeypatch.setattr(build, "MAX_HTML_BYTES", 1)  # nothing fits: the grids are left out, and it is said
    with caplog.at_level(logging.WARNING):
        out = render(runs, monkeypatch)
    assert "data:image/png" not in (out / "index.html").read_text(encoding="utf-8")
    assert "index.html: sample grids left out" in (out / "README.md").read_text(encoding="utf-8")


def test_the_reconstructions_row_shows_the_runs_reconstructions_picture():
    from types import SimpleNamespace

    from genbench.results.figures import pictures_of

    assert pictures_of(SimpleNamespace(sampler="reconstruction")) == ("reconstructions.png",)


def test_grey_figures_are_written_as_one_channel_and_colour_ones_are_kept():
    from PIL import Image

    from genbench.results.build import as_grey

    grey = Image.new("RGB", (4, 4), (90, 90, 90))
    assert as_grey(grey).mode == "L" and as_grey(grey).getpixel((0, 0)) == 90
    colour = grey.copy()
    colour.putpixel((1, 1), (200, 10, 10))
    assert as_grey(colour).mode == "RGB"


def test_the_committed_layout_follows_the_schema_and_reads_what_make_results_writes():
    """results/layout.yaml parses, and every root it reads is a sweep directory experiments/results.sh writes."""
    from genbench.results.layout import load_layout

    repo = Path(__file__).resolve().parents[1]
    layout = load_layout(repo / "results" / "layout.yaml")
    script = (repo / "experiments" / "results.sh").read_text()
    assert {s.id for s in layout.sections} >= {"digits", "fig4"}
    for section in layout.sections:
        for root in section.roots:
            assert root.parts[:2] == ("outputs", "results")
            name = root.parts[2]
            assert f"stream {name} " in script or f'"{name}/' in script, name
