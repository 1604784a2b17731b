"""The leaderboard on hand-made run directories: grouping, mean/std, problems, published rows, the three files, and
the HTML page in headless Chromium (rows, sorting by hash and by click, thumbnails, plot, screenshot).

Chromium tests need Debian's `chromium` and `chromium-driver` (apt-get install -y chromium chromium-driver).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from genbench.leaderboard import render
from genbench.leaderboard.__main__ import main, make_board, write_board
from genbench.leaderboard.collect import collect
from genbench.leaderboard.csv_export import to_csv
from genbench.leaderboard.markdown import to_markdown
from genbench.leaderboard.published import load_published, parse_published
from genbench.leaderboard.render import to_html
from genbench.leaderboard.stats import MEASURED, Stat, build_board, summarise
from genbench.run.record import merge_metrics

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "experiments" / "published.yaml"
APT_HINT = "install with: apt-get install -y chromium chromium-driver"


def write_run(
    path: Path, metrics: dict | None = None, raw: str | None = None, samples: str | None = None
) -> Path:
    path.mkdir(parents=True)
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
    if raw is not None:
        (path / "metrics.json").write_text(raw)
    if samples is not None:  # a tiny grid in one colour, so tests can tell which run's image was chosen
        Image.new("RGB", (32, 32), samples).save(path / "samples.png")
    return path


def finished(model: str, data: str, seed: int, **metrics: float) -> dict:
    return {
        "status": "finished",
        "model": model,
        "data": data,
        "seed": seed,
        "git_commit": "abc123",
        **metrics,
    }


PROTOCOL = {"n_gen": 10000, "n_ref": 10000, "reference_split": "test"}


def make_runs(base: Path) -> tuple[Path, Path]:
    """Two roots: vae and glo on mnist and fashion_mnist over seeds, plus failed, running, unfinished, corrupt runs.

    Within a dataset every metric recorded with a protocol has the same one, so each dataset is one table."""
    outputs, multirun = base / "outputs", base / "multirun"
    for seed, fid, kid, mse, secs, colour in [
        (0, 10, 0.25, 0.25, 100, None),
        (1, 12, 0.5, 0.5, 200, "red"),  # the best run that has samples
        (2, 14, None, 0.75, 300, "blue"),  # no KID: counted 2 of 3
    ]:
        metrics = finished(
            "vae", "mnist", seed, recon_mse_test=mse, train_seconds=secs, images_per_second=1000
        )
        metrics["fid_classifier@prior"] = fid
        if kid is not None:
            metrics["kid_classifier@prior"] = kid
        metrics["protocols"] = {"fid_classifier@prior": PROTOCOL}
        metrics["skipped"] = {"fid_inception": "Inception weights not found: /x"}
        write_run(outputs / "vae" / "mnist" / f"seed{seed}", metrics, samples=colour)
    sweep = multirun / "2024-01-01_00-00-00"
    for seed, gaussian, imle, secs in [(0, 50, 9, 1000), (1, 52, 11, 3000)]:
        metrics = finished("glo", "mnist", seed, recon_mse_test=0.5, train_seconds=secs)
        metrics |= {
            "fid_inception@gaussian": gaussian,
            "fid_inception@imle": imle,
            "fid_classifier@gaussian": 5,
            "protocols": {
                "fid_classifier@gaussian": PROTOCOL,
                # GLANN's protocol: its published rows sit beside these (Lucic's TF-Inception ones apart)
                "fid_inception@gaussian": PROTOCOL,
                "fid_inception@imle": PROTOCOL,
            },
        }
        run = write_run(sweep / f"{seed}_glo_mnist_seed{seed}", metrics)
        (run / ".hydra").mkdir()
        (run / "checkpoints").mkdir()  # inside a run: not a run of its own
    for seed, fid in [(0, 20), (1, 22)]:
        metrics = finished("vae", "fashion_mnist", seed, train_seconds=50)
        metrics["fid_classifier@prior"] = fid
        write_run(outputs / "vae" / "fashion_mnist" / f"seed{seed}", metrics)
    write_run(
        outputs / "glo" / "fashion_mnist" / "seed0",
        finished("glo", "fashion_mnist", 0, **{"fid_inception@gaussian": 60}),
    )
    bad = finished("vae", "mnist", 3, **{"fid_classifier@prior": 999})
    write_run(
        outputs / "vae" / "mnist" / "failed",
        {**bad, "status": "failed", "error": "RuntimeError: CUDA out of memory"},
    )
    write_run(outputs / "vae" / "mnist" / "running", {**bad, "status": "running"})
    (write_run(outputs / "alae" / "mnist" / "hydra_only") / ".hydra").mkdir()
    (write_run(outputs / "alae" / "mnist" / "ckpt_only") / "checkpoints").mkdir()
    write_run(outputs / "vae" / "mnist" / "corrupt_json", raw="{not json")
    write_run(outputs / "vae" / "mnist" / "corrupt_list", raw="[1, 2]")
    (outputs / "notes").mkdir()  # a folder with no run marker is ignored
    return outputs, multirun


def row(board, data, model, sampler, source=MEASURED):
    (match,) = [
        r
        for r in board.rows
        if (r.data, r.model, r.sampler) == (data, model, sampler)
        and (r.source == MEASURED) == (source == MEASURED)
    ]
    return match


@pytest.fixture
def roots(tmp_path) -> tuple[Path, Path]:
    return make_runs(tmp_path)


def test_collect_finds_runs_and_lists_problems_apart(roots, caplog):
    with caplog.at_level(logging.WARNING):
        collection = collect(roots)
    assert len(collection.runs) == 8
    problems = {p.path.name: (p.status, p.error) for p in collection.problems}
    assert set(problems) == {"failed", "running", "hydra_only", "ckpt_only", "corrupt_json", "corrupt_list"}
    assert problems["failed"] == ("failed", "RuntimeError: CUDA out of memory")
    assert problems["running"][0] == "running"
    assert problems["hydra_only"][0] == problems["ckpt_only"][0] == "unfinished"
    assert problems["corrupt_json"][0] == problems["corrupt_list"][0] == "corrupt"
    for name in ("corrupt_json", "corrupt_list"):
        assert any(name in w for w in collection.warnings)
        assert any(name in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert "not an object" in problems["corrupt_list"][1]


def test_groups_by_data_model_sampler_with_exact_mean_std_n(roots):
    board = build_board(collect(roots))
    keys = [(r.data, r.model, r.sampler, r.n) for r in board.rows]
    assert keys == [
        ("fashion_mnist", "glo", "gaussian", 1),
        ("fashion_mnist", "vae", "prior", 2),
        ("mnist", "glo", "gaussian", 2),
        ("mnist", "glo", "imle", 2),
        ("mnist", "vae", "prior", 3),  # failed and running runs are not averaged in
    ]
    vae = row(board, "mnist", "vae", "prior")
    assert vae.stats["fid_classifier"] == Stat(12.0, 2.0, 3)
    assert vae.stats["kid_classifier"] == Stat(0.375, math.sqrt(0.03125), 2)
    assert vae.stats["recon_mse_test"] == Stat(0.5, 0.25, 3)
    assert vae.stats["train_seconds"] == Stat(200.0, 100.0, 3)
    assert vae.stats["images_per_second"] == Stat(1000.0, 0.0, 3)
    assert "fid_inception" not in vae.stats and "recon_mse_train" not in vae.stats
    assert vae.samples is not None  # the lowest FID among runs with samples: seed 1
    assert (vae.samples.run.name, vae.samples.seed, vae.samples.path.name) == ("seed1", 1, "samples.png")
    assert (vae.samples.fid_key, vae.samples.fid, vae.samples.chosen) == (
        "fid_classifier",
        12.0,
        "lowest fid_classifier of 2 runs with a grid (of 3)",  # seed 0 has none
    )
    assert "fid_classifier" in vae.protocol and "n_gen=10000" in vae.protocol
    assert vae.notes == ("fid_inception skipped in 3 of 3 runs: Inception weights not found: /x",)
    assert vae.git_commits == ("abc123",)
    gaussian, imle = row(board, "mnist", "glo", "gaussian"), row(board, "mnist", "glo", "imle")
    assert gaussian.stats["fid_inception"] == Stat(51.0, math.sqrt(2), 2)
    assert imle.stats["fid_inception"] == Stat(10.0, math.sqrt(2), 2)
    assert gaussian.stats["fid_classifier"] == Stat(5.0, 0.0, 2) and "fid_classifier" not in imle.stats
    for r in (gaussian, imle):  # run-level metrics repeated on each sampler's row
        assert r.stats["recon_mse_test"] == Stat(0.5, 0.0, 2)
        assert r.stats["train_seconds"] == Stat(2000.0, math.sqrt(2_000_000), 2)
    assert row(board, "fashion_mnist", "vae", "prior").stats["fid_classifier"] == Stat(21.0, math.sqrt(2), 2)
    assert row(board, "fashion_mnist", "glo", "gaussian").stats["fid_inception"] == Stat(60.0, None, 1)


def test_repeated_seeds_are_warned_about(tmp_path):
    for name in ("a", "b"):
        write_run(tmp_path / name, finished("vae", "mnist", 0, **{"fid_classifier@prior": 1}))
    board = build_board(collect([tmp_path]))
    assert board.rows[0].n == 2
    assert [w for w in board.warnings if "share seed 0" in w and "mnist/vae/prior" in w]


def test_summarise_leaves_nan_and_inf_out_of_the_mean_and_counts_them():
    assert summarise([1.0, math.nan, 3.0]) == Stat(2.0, math.sqrt(2), 2, ("NaN",))
    assert summarise([1.0, math.inf]) == Stat(1.0, None, 1, ("+Infinity",))
    stat = summarise([math.nan, -math.inf])
    assert stat.count == 0 and stat.std is None and stat.nonfinite == ("-Infinity", "NaN")


def test_published_rows_only_for_measured_datasets_unless_asked(roots):
    published = load_published(PUBLISHED)
    board = build_board(collect(roots), published)
    shown = [r for r in board.rows if r.published]
    assert {(r.data, r.model, r.sampler) for r in shown} == {
        (data, model, sampler)
        for data in ("mnist", "fashion_mnist")
        for model, sampler in (("vae", "prior"), ("glo", "gaussian"), ("glo", "imle"), ("gan", "prior"))
    }
    assert all(r.verified is False and r.n is None and r.protocol for r in shown)
    vae = row(board, "mnist", "vae", "prior", source="published")
    assert vae.stats == {"fid_inception": Stat(23.8, 0.6, None)}
    assert "Lucic et al. 2018" in vae.source and "TensorFlow" in vae.protocol
    assert row(board, "fashion_mnist", "glo", "imle", source="published").stats["fid_inception"] == Stat(
        13.0, 0.1, None
    )
    # published rows sit beside the measured rows of the same model and sampler
    mnist = [(r.model, r.sampler, r.published) for r in board.table("mnist")]
    assert mnist.index(("vae", "prior", True)) == mnist.index(("vae", "prior", False)) + 1
    everything = build_board(collect(roots), published, all_published=True)
    assert row(everything, "celeba", "glo", "gaussian", source="published").stats["fid_inception"] == Stat(
        52.4, 0.5, None
    )
    assert everything.datasets == ["celeba", "fashion_mnist", "mnist"]


def test_published_rows_sit_beside_ours_only_under_their_protocol(roots):
    """GLANN's numbers (pytorch-fid Inception, 10k vs 10k test) join the MNIST table whose Inception FIDs were
    measured that way; Lucic's (TensorFlow Inception) are listed apart with the reason, in Markdown and HTML; an
    Inception FID at another N is not comparable either."""
    from genbench.leaderboard.markdown import to_markdown

    board = build_board(collect(roots), load_published(PUBLISHED))
    (table,) = board.tables("mnist")
    beside = {(r.model, r.sampler) for r in table.rows if r.published}
    assert beside == {("glo", "gaussian"), ("glo", "imle")}
    apart = {(r.model, r.sampler) for r in board.apart("mnist")}
    assert apart == {("vae", "prior"), ("gan", "prior")}
    markdown = to_markdown(board)
    assert "Published numbers under other protocols" in markdown
    assert "its protocol cannot be reproduced here" in markdown
    glann = next(r for r in table.rows if r.published and r.sampler == "imle")
    assert glann.comparable_with({"fid_inception": tuple(sorted(PROTOCOL.items()))})
    assert not glann.comparable_with({"fid_inception": tuple(sorted({**PROTOCOL, "n_gen": 5000}.items()))})
    assert not glann.comparable_with({"fid_inception": None})  # not recorded
    with pytest.raises(ValueError, match="comparable_when"):
        parse_published([{"name": "X", "model": "x", "sampler": "prior", "source": "s", "protocol": "p",
                          "verified": False, "comparable_when": ["n_gen"]}])  # fmt: skip


def test_published_yaml_is_strict():
    entry = {"name": "X", "model": "x", "sampler": "prior", "source": "s", "protocol": "p", "verified": False}
    with pytest.raises(ValueError, match="unknown keys"):
        parse_published([{**entry, "fid": {"mnist": {"mean": 1.0}}}])
    with pytest.raises(ValueError, match="missing keys"):
        parse_published([{k: v for k, v in entry.items() if k != "protocol"}])
    with pytest.raises(ValueError, match="mean, std"):
        parse_published([{**entry, "fid_inception": {"mnist": {"mean": 1.0, "sd": 2}}}])


def test_cli_writes_three_files_without_torch(roots, tmp_path):
    """The real entry point in a fresh interpreter where importing torch fails: the leaderboard must not need it."""
    out = tmp_path / "board"
    argv = [*map(str, roots), "--out", str(out), "--published", str(PUBLISHED)]
    code = (
        "import runpy, sys; sys.modules['torch'] = None; "
        f"sys.argv = ['genbench.leaderboard', *{argv!r}]; "
        "runpy.run_module('genbench.leaderboard', run_name='__main__', alter_sys=True)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["leaderboard.csv", "leaderboard.html", "leaderboard.md"]
    markdown = (out / "leaderboard.md").read_text()
    assert result.stdout == markdown + "\n"
    assert "corrupt_json" in result.stderr and "WARNING" in result.stderr
    assert "| vae | prior | measured | 3 |  | 12 ± 2 |" in markdown  # blank Inception FID
    assert "| 0.375 ± 0.1768 (2/3) |" in markdown
    assert "## Failed or unfinished runs (not averaged)" in markdown and "CUDA out of memory" in markdown
    assert "published: VAE; Lucic et al. 2018, Table 2 (unverified)" in markdown
    with open(out / "leaderboard.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 5 + 8
    vae = next(r for r in lines if (r["data"], r["model"], r["source"]) == ("mnist", "vae", "measured"))
    assert (vae["n"], vae["fid_classifier_mean"], vae["fid_classifier_std"], vae["fid_classifier_count"]) == (
        "3",
        "12.0",
        "2.0",
        "3",
    )
    assert vae["fid_inception_mean"] == vae["fid_inception_std"] == ""  # missing is blank, not 0
    glo = next(
        r for r in lines if (r["data"], r["model"]) == ("fashion_mnist", "glo") and r["source"] == "measured"
    )
    assert (glo["fid_inception_mean"], glo["fid_inception_std"], glo["fid_inception_count"]) == (
        "60.0",
        "",
        "1",
    )


class ReferenceFinder(HTMLParser):
    """Every URL-valued attribute of a page's elements."""

    @classmethod
    def of(cls, page: str) -> list[str]:
        finder = cls()
        finder.feed(page)
        return finder.refs

    def __init__(self):
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.refs += [
            v or "" for k, v in attrs if k in ("src", "href", "srcset", "action", "xlink:href", "data")
        ]


def test_html_is_self_contained_and_escaped(tmp_path):
    outputs = tmp_path / "outputs"
    evil = '<script>alert("x")</script>'
    metrics = finished(evil, "mnist|<i>", 0, train_seconds=1, **{"fid_classifier@a|b": 3})
    write_run(outputs / "evil", metrics, samples="green")
    write_run(outputs / "broken", {"status": "failed", "error": "<img src=x onerror=alert(1)>"})
    board = build_board(collect([outputs]))
    page = to_html(board)
    assert evil not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "<i>" not in page
    assert page.count("<script>") == 1  # only the page's own sorter
    refs = ReferenceFinder.of(page)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)  # no URL but inline images
    assert "| a\\|b |" in to_markdown(board)  # a pipe cannot break the Markdown table


# ---------------------------------------------------------------------------------------------------- hostile input
class TagCollector(HTMLParser):
    """Every start tag of a page with its attribute names."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, list[str]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, [k for k, _ in attrs]))


PAGE_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "h4", "p", "section", "div", "details",
    "summary", "ul", "li", "b", "br", "span", "table", "thead", "tbody", "tr", "th", "td", "sup", "figure",
    "figcaption", "img", "script",
}  # fmt: skip


def md_cells(line: str) -> list[str]:
    """A Markdown table line split on its unescaped pipes (a backslash escapes the next character)."""
    cells, cell, chars = [], "", iter(line)
    for c in chars:
        if c == "\\":
            cell += c + next(chars, "")
        elif c == "|":
            cells.append(cell)
            cell = ""
        else:
            cell += c
    return [*cells, cell]


def image_colours(page: str) -> list[tuple[int, int, int]]:
    """The colour of the first pixel of each image embedded in ``page``."""
    colours = []
    for ref in ReferenceFinder.of(page):
        with Image.open(io.BytesIO(base64.b64decode(ref.split(",", 1)[1]))) as image:
            colours.append(image.convert("RGB").getpixel((0, 0)))
    return colours


def test_samples_are_embedded_only_from_regular_files_inside_the_run(tmp_path):
    runs = tmp_path / "runs"
    Image.new("RGB", (8, 8), "red").save(tmp_path / "secret.png")  # outside every run directory
    Image.new("RGB", (8, 8), "red").save(tmp_path / "runs_secret.png")
    linked = write_run(runs / "linked", finished("a", "mnist", 0, **{"fid_classifier@prior": 1}))
    (linked / "samples.png").symlink_to(tmp_path / "secret.png")
    # samples_<sampler>.png with a sampler that walks out: runs/climb/samples_/../../../runs_secret.png
    climb = write_run(
        runs / "climb", finished("b", "mnist", 0, **{"fid_classifier@/../../../runs_secret": 1})
    )
    (climb / "samples_").mkdir()
    assert (climb / "samples_/../../../runs_secret.png").resolve() == (tmp_path / "runs_secret.png").resolve()
    dotdot = write_run(runs / "dotdot", finished("c", "mnist", 0, **{"fid_classifier@../x": 1}))
    (dotdot / "samples_..").mkdir()
    Image.new("RGB", (8, 8), "red").save(dotdot / "samples_.." / "x.png")  # inside, but the name has a "/"
    folder = write_run(runs / "folder", finished("d", "mnist", 0, **{"fid_classifier@prior": 1}))
    (folder / "samples.png").mkdir()
    fifo = write_run(runs / "fifo", finished("e", "mnist", 0, **{"fid_classifier@prior": 1}))
    os.mkfifo(fifo / "samples.png")  # reading it would block forever
    inside = write_run(runs / "inside", finished("f", "mnist", 0, **{"fid_classifier@prior": 1}))
    Image.new("RGB", (8, 8), "green").save(inside / "grid.png")
    (inside / "samples.png").symlink_to("grid.png")  # a link that stays inside is fine
    board = build_board(collect([runs]))
    page = to_html(board)
    assert image_colours(page) == [(0, 128, 0)]  # only the green grid of "inside"
    warnings = "\n".join(board.warnings)
    for run, reason in [
        (linked, "resolves outside the run directory"),
        (climb, "is not a plain file name"),
        (dotdot, "is not a plain file name"),
        (folder, "is not a regular file"),
        (fifo, "is not a regular file"),
    ]:
        assert any(w.startswith(os.path.relpath(run)) and reason in w for w in board.warnings), (
            run,
            warnings,
        )
    assert "inside" not in warnings
    assert all(w in page for w in map(html.escape, board.warnings))


def test_a_metrics_json_linked_from_outside_is_corrupt(tmp_path):
    (tmp_path / "elsewhere.json").write_text(
        json.dumps(finished("vae", "mnist", 0, **{"fid_classifier@p": 1}))
    )
    run = tmp_path / "runs" / "linked"
    run.mkdir(parents=True)
    (run / "metrics.json").symlink_to(tmp_path / "elsewhere.json")
    board = build_board(collect([tmp_path / "runs"]))
    assert not board.rows
    (problem,) = board.problems
    assert problem.status == "corrupt" and "resolves outside the run directory" in problem.error


HOSTILE = {
    "script": '<script>alert("x")</script>',
    "img": "<img src=x onerror=alert(1)>",
    "table": "a | b\n| c\r\nd",
    "backslash": "x\\|y",
    "link": "[click](javascript:alert(1)) ![t](http://example.com/t.png) `code` *em*",
    "ansi": "red\x1b[31m\x07\u202eevil",
    "entity": "&lt;script&gt;",
}


def test_html_and_markdown_render_hostile_strings_inert(tmp_path):
    runs = tmp_path / "runs"
    for i, (name, text) in enumerate(HOSTILE.items()):
        metrics = finished(f"{name} {text}", f"data {text}", f"seed {text}", **{f"fid_classifier@{text}": i})
        metrics |= {"git_commit": text, "train_seconds": 10 + i}
        metrics["protocols"] = {f"fid_classifier@{text}": {"n_gen": 100, "reference_split": text}}
        metrics["skipped"] = {f"fid_inception {text}": text}
        write_run(runs / name, metrics, samples="green")
        write_run(runs / f"failed_{name}", {"status": text, "error": text})
    write_run(runs / "typed", {**finished("t", "mnist", 0), "fid_classifier@p": HOSTILE["script"]})
    board = build_board(collect([runs]))
    assert len(board.rows) == len(HOSTILE) + 1 and len(board.problems) == len(HOSTILE)
    page = to_html(board)
    collector = TagCollector()
    collector.feed(page)
    assert {tag for tag, _ in collector.tags} <= PAGE_TAGS
    assert [tag for tag, _ in collector.tags].count("script") == 1  # only the page's own sorter
    assert not [(tag, a) for tag, attrs in collector.tags for a in attrs if a.startswith("on")]
    assert "\x1b" not in page and "\x07" not in page and "\u202e" not in page
    assert "&amp;lt;script&amp;gt;" in page  # an entity in the data is shown as typed, not decoded
    markdown = to_markdown(board)
    assert "<" not in markdown.replace("&lt;", "") and ">" not in markdown.replace("&gt;", "")
    assert "](" not in markdown.replace("\\](", "") and "\x1b" not in markdown and "\u202e" not in markdown
    for block in markdown.split("\n\n"):  # every table keeps one cell per column on every line
        lines = block.splitlines()
        if lines and lines[0].startswith("| "):
            widths = {len(md_cells(line)) for line in lines}
            assert len(widths) == 1, block
    assert "x\\\\\\|y" in markdown  # the backslash is escaped, so the pipe stays escaped
    assert "\n- " not in "\n".join(line for line in markdown.splitlines() if line.startswith("|"))


def test_csv_neutralises_formulas_but_keeps_negative_numbers(tmp_path):
    metrics = finished('=HYPERLINK("http://x")', "+mnist", 0, recon_mse_test=-0.5, train_seconds=-3)
    metrics |= {"fid_classifier@-cmd|calc": -1.25, "git_commit": "@SUM(1)"}
    metrics["protocols"] = {"fid_classifier@-cmd|calc": {"reference_split": "\tsplit"}}
    write_run(tmp_path / "runs" / "a", metrics)
    board = build_board(collect([tmp_path / "runs"]))

    text = to_csv(board)
    (line,) = list(csv.DictReader(io.StringIO(text)))
    assert line["model"] == '\'=HYPERLINK("http://x")' and line["data"] == "'+mnist"
    assert line["sampler"] == "'-cmd|calc" and line["git_commits"] == "'@SUM(1)"
    assert line["fid_classifier_mean"] == "-1.25" and line["recon_mse_test_mean"] == "-0.5"
    assert line["train_seconds_mean"] == "-3.0"
    dangerous = ("=", "+", "-", "@", "\t", "\r")
    cells = [c for row in csv.reader(io.StringIO(text)) for c in row]
    assert [c for c in cells if c.startswith(dangerous)] == ["-1.25", "-0.5", "-3.0"]  # numbers only


def test_deep_huge_and_unparsable_json_are_corrupt_runs(tmp_path, caplog):
    runs = tmp_path / "runs"
    head = json.dumps(finished("vae", "mnist", 0))[:-1]
    write_run(runs / "deep", raw=head + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    write_run(runs / "deep_object", raw='{"a": ' * 100_000 + "1" + "}" * 100_000)
    write_run(runs / "huge_int", raw=head + ', "fid_classifier@p": ' + "9" * 5000 + "}")
    write_run(runs / "binary", raw="")
    (runs / "binary" / "metrics.json").write_bytes(b"\xff\xfe\x00garbage\x80")
    (write_run(runs / "huge") / "metrics.json").write_bytes(b"")
    with open(runs / "huge" / "metrics.json", "r+b") as f:
        f.truncate(16 * 2**20 + 1)  # sparse: 16 MiB + 1 byte of nothing
    write_run(runs / "good", finished("vae", "mnist", 0, **{"fid_classifier@prior": 3}))
    with caplog.at_level(logging.WARNING):
        board = build_board(collect([runs]))
    assert [(r.model, r.n) for r in board.rows] == [("vae", 1)]
    problems = {p.path.name: p for p in board.problems}
    assert {name: p.status for name, p in problems.items()} == dict.fromkeys(
        ["binary", "deep", "deep_object", "huge", "huge_int"], "corrupt"
    )
    assert (
        "nested too deeply" in problems["deep"].error and "nested too deeply" in problems["deep_object"].error
    )
    assert "over the 16777216 bytes" in problems["huge"].error
    assert "4300" in problems["huge_int"].error
    for name in problems:
        assert any(name in w for w in board.warnings)
    page, markdown = to_html(board), to_markdown(board)
    assert "nested too deeply" in page and "over the 16777216 bytes" in markdown


@pytest.mark.parametrize("depth", [200, 800, 990])
def test_nesting_the_parser_accepts_breaks_nothing_downstream(tmp_path, depth):
    """Nesting just under the parser's limit, in every field the board reads: parsed, or corrupt; never a crash."""
    nested = "[" * depth + "]" * depth
    head = json.dumps(finished("vae", "mnist", 0, **{"fid_classifier@prior": 1}))[:-1]
    raw = head + f', "git_commit": {nested}, "sampler": {nested}, "protocols": {{"fid_classifier@prior": '
    raw += f'{{"n_gen": {nested}}}}}, "skipped": {{"fid_inception": {nested}}}, "kid_classifier@prior": {nested}}}'
    write_run(tmp_path / "runs" / "finished", raw=raw)
    write_run(
        tmp_path / "runs" / "failed", raw=f'{{"status": {nested}, "error": {nested}, "seed": {nested}}}'
    )
    board = build_board(collect([tmp_path / "runs"]))
    assert len(board.rows) + len(board.problems) == 2

    assert to_markdown(board) and to_html(board) and to_csv(board)


def test_nan_and_infinity_are_left_out_of_the_mean_and_named(tmp_path):
    runs = tmp_path / "runs"
    for seed, fid, kid in [(0, 10.0, math.inf), (1, 12.0, math.nan), (2, math.nan, -math.inf)]:
        metrics = finished("vae", "mnist", seed, train_seconds=100)
        metrics |= {"fid_classifier@prior": fid, "kid_classifier@prior": kid}
        write_run(runs / f"seed{seed}", metrics)
    assert "NaN" in (runs / "seed1" / "metrics.json").read_text()  # json.dumps writes NaN, Infinity as such
    board = build_board(collect([runs]))
    (vae,) = board.rows
    assert vae.n == 3
    assert vae.stats["fid_classifier"] == Stat(11.0, math.sqrt(2), 2, ("NaN",))
    kid = vae.stats["kid_classifier"]
    assert kid.count == 0 and sorted(kid.nonfinite) == ["+Infinity", "-Infinity", "NaN"]
    markdown, page = to_markdown(board), to_html(board)
    assert "| 11 ± 1.414 (2/3; 1 NaN) | +Infinity/-Infinity/NaN in 3/3 |" in markdown
    for text in (markdown, page):
        assert "nan ± nan" not in text.lower() and "± nan" not in text.lower() and "nan ±" not in text.lower()
    for seed, key, kind in [(0, "kid_classifier@prior", "+Infinity"), (2, "fid_classifier@prior", "NaN")]:
        assert any(
            w.startswith(os.path.relpath(runs / f"seed{seed}")) and key in w and kind in w
            for w in board.warnings
        )
    assert any("fid_classifier is NaN in 1 of 3 runs" in note and "seed2" in note for note in vae.notes)

    (line,) = list(csv.DictReader(io.StringIO(to_csv(board))))
    assert (line["fid_classifier_mean"], line["fid_classifier_count"]) == ("11.0", "2")
    assert (line["kid_classifier_mean"], line["kid_classifier_count"]) == ("", "0")
    assert "nan" not in line["fid_classifier_std"].lower()


def test_values_of_the_wrong_type_are_dropped_with_a_note_each(tmp_path):
    runs = tmp_path / "runs"
    metrics = finished("vae", "mnist", 0)
    metrics |= {
        "fid_classifier@prior": 7,
        "fid_inception@prior": "12.5",
        "kid_classifier@prior": [1, 2],
        "precision_classifier@prior": True,
        "recall_classifier@prior": {"value": 1},
        "train_seconds": "fast",
        "recon_mse_test": None,
        "images_per_second": 10**400,
        "seed": [0],
        "git_commit": {"sha": "x"},
        "protocols": {"fid_classifier@prior": "n_gen=10", "kid_classifier@prior": {"n_gen": [[[1]]]}},
        "skipped": ["fid_inception"],
    }
    write_run(runs / "typed", metrics)
    write_run(runs / "bad_pid", {"status": "running", "pid": [1], "host": socket.gethostname()})
    write_run(runs / "no_model", {**finished("vae", "mnist", 0), "model": ["vae"]})
    board = build_board(collect([runs]))
    (vae,) = board.rows
    assert set(vae.stats) == {"fid_classifier"} and vae.stats["fid_classifier"] == Stat(7.0, None, 1)
    where = os.path.relpath(runs / "typed")
    for key, kind in [
        ("fid_inception@prior", "string"),
        ("kid_classifier@prior", "list"),
        ("precision_classifier@prior", "boolean"),
        ("recall_classifier@prior", "object"),
        ("train_seconds", "string"),
        ("recon_mse_test", "null"),
        ("images_per_second", "too large for a float"),
        ("seed", "list"),
        ("git_commit", "object"),
        ("protocols.fid_classifier@prior", "string"),
        ("skipped", "list"),
    ]:
        assert [w for w in board.warnings if w.startswith(f"{where}: {key}") and kind in w], (
            key,
            board.warnings,
        )
    problems = {p.path.name: p for p in board.problems}
    assert problems["bad_pid"].status == "running" and "pid" in problems["bad_pid"].error
    assert problems["no_model"].status == "corrupt" and "'model'" in problems["no_model"].error
    table = [line for line in to_markdown(board).splitlines() if line.startswith("| vae")]
    assert len(table) == 1 and "12.5" not in table[0]


# ---------------------------------------------------------------------------------------------------- protocols
CLASSIFIER = "genbench classifier mnist 28px penultimate (128), test accuracy 0.9912, weights 3f2a9c0d"
INCEPTION = "torch-fidelity inception-v3-compat pool3 (2048)"


def record(model: str, data: str, seed: int, samplers: dict[str, float], n_gen: int = 10000, **extra) -> dict:
    """A metrics.json as the evaluators write it: classifier and Inception metrics, each with its protocol."""
    metrics = finished(model, data, seed, recon_mse_test=0.01 * (seed + 1), train_seconds=100.0 * (seed + 1))
    protocols = {}
    for sampler, fid in samplers.items():
        for name, extractor, resizer in [
            ("classifier", CLASSIFIER.replace("mnist", data), "none (native 28x28)"),
            ("inception", INCEPTION, "torch-fidelity bilinear, TF1.x-compatible, to 299x299"),
        ]:
            base = {"n_gen": n_gen, "n_ref": 10000, "reference_split": "test", "resizer": resizer}
            base["feature_extractor"] = extractor
            scale = 1.0 if name == "classifier" else 3.0
            metrics |= {
                f"fid_{name}@{sampler}": fid * scale + seed,
                f"kid_{name}@{sampler}": 0.01 * fid,
                f"kid_{name}_std@{sampler}": 0.001,
                f"precision_{name}@{sampler}": 0.7,
                f"recall_{name}@{sampler}": 0.5,
            }
            kid = {**base, "kid_subsets": 100, "kid_subset_size": 1000}
            protocols |= {
                f"fid_{name}@{sampler}": base,
                f"kid_{name}@{sampler}": kid,
                f"kid_{name}_std@{sampler}": kid,
                f"precision_{name}@{sampler}": {**base, "k": 3},
                f"recall_{name}@{sampler}": {**base, "k": 3},
            }
    metrics["protocols"] = protocols
    return metrics | extra


def test_runs_under_different_protocols_are_never_averaged(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "seed0", record("vae", "mnist", 0, {"prior": 10}))
    write_run(runs / "seed1", record("vae", "mnist", 1, {"prior": 10}, n_gen=1000))
    write_run(runs / "glo0", record("glo", "mnist", 0, {"gaussian": 30}))
    board = build_board(collect([runs]))
    vae = [r for r in board.rows if r.model == "vae"]
    assert [(r.n, r.stats["fid_classifier"]) for r in vae] == [
        (1, Stat(10.0, None, 1)),
        (1, Stat(11.0, None, 1)),
    ]
    assert all(s.count == 1 for r in board.rows for s in r.stats.values())  # nothing was averaged
    (warning,) = [w for w in board.warnings if "different protocols" in w]
    assert "mnist/vae/prior" in warning and "n_gen=10000 / n_gen=1000" in warning
    tables = board.tables("mnist")
    assert [[(r.model, r.runs) for r in t.rows] for t in tables] == [
        [("glo", (runs / "glo0",)), ("vae", (runs / "seed0",))],
        [("vae", (runs / "seed1",))],
    ]
    assert [dict(t.protocols["fid_classifier"])["n_gen"] for t in tables] == [10000, 1000]
    markdown = to_markdown(board)
    protocol_lines = [line for line in markdown.splitlines() if line.startswith("Protocol: ")]
    assert (
        len(protocol_lines) == 2 and "n_gen=10000" in protocol_lines[0] and "n_gen=1000," in protocol_lines[1]
    )
    assert "### mnist: protocol 1 of 2" in markdown and "### mnist: protocol 2 of 2" in markdown
    assert "n_gen" not in "\n".join(line for line in markdown.splitlines() if line.startswith("|"))
    page = to_html(board)
    assert page.count('<details class="protocol">') == 2
    assert 'id="board-mnist"' in page and 'id="board-mnist-2"' in page


@pytest.mark.parametrize(
    "change",
    [
        {"n_ref": 5000},
        {"reference_split": "train"},
        {"feature_extractor": CLASSIFIER.replace("3f2a9c0d", "77aa0001")},  # other classifier weights
        None,  # no protocol recorded at all
    ],
)
def test_any_protocol_difference_splits_the_seeds(tmp_path, change):
    runs = tmp_path / "runs"
    write_run(runs / "seed0", record("vae", "mnist", 0, {"prior": 10}))
    other = record("vae", "mnist", 1, {"prior": 10})
    if change is None:
        del other["protocols"]
    else:
        other["protocols"] = {k: {**v, **change} for k, v in other["protocols"].items()}
    write_run(runs / "seed1", other)
    board = build_board(collect([runs]))
    assert [r.n for r in board.rows] == [1, 1] and len(board.tables("mnist")) == 2


def test_a_sampler_field_naming_the_rows_own_sampler_does_not_split_tables(tmp_path):
    runs = tmp_path / "runs"
    for model, sampler in [("vae", "prior"), ("glo", "gaussian")]:
        metrics = record(model, "mnist", 0, {sampler: 10})
        metrics["protocols"] = {k: {**v, "sampler": sampler} for k, v in metrics["protocols"].items()}
        write_run(runs / model, metrics)
    board = build_board(collect([runs]))
    (table,) = board.tables("mnist")
    assert [r.model for r in table.rows] == ["glo", "vae"]
    assert "sampler=" not in to_markdown(board)


def test_a_metric_missing_from_one_seed_does_not_split_it(tmp_path):
    """Inception weights absent on one machine: its run lacks the Inception metrics, and is still averaged in."""
    runs = tmp_path / "runs"
    write_run(runs / "seed0", record("vae", "mnist", 0, {"prior": 10}))
    partial = record("vae", "mnist", 1, {"prior": 10})
    for key in [k for k in partial if "_inception" in k]:
        del partial[key]
    partial["skipped"] = {"fid_inception": "Inception weights not found"}
    write_run(runs / "seed1", partial)
    board = build_board(collect([runs]))
    (vae,) = board.rows
    assert vae.n == 2 and vae.stats["fid_classifier"].count == 2 and vae.stats["fid_inception"].count == 1
    assert "| 30 (1/2) |" in to_markdown(board)


def figure_captions(page: str) -> list[str]:
    """The text of each gallery caption of ``page``, tags removed."""
    return [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<figcaption>(.*?)</figcaption>", page)]


def test_each_sampler_of_a_run_is_a_row_of_its_own_with_its_own_grid(tmp_path):
    """One evaluation over four samplers (metrics keyed @prior, @gaussian, @gmm, @imle): four rows per model, each
    averaged over seeds on its own; samples.png is shown only for the sampler that drew it (the run's own)."""
    runs = tmp_path / "runs"
    samplers = {"gaussian": 50, "gmm": 30, "imle": 12, "prior": 70}
    for seed in (0, 1):
        path = write_run(runs / f"seed{seed}", record("vae", "mnist", seed, samplers) | {"sampler": "prior"})
        Image.new("RGB", (64, 64), "green").save(path / "samples.png")  # drawn by the run's own sampler
        Image.new("RGB", (64, 64), "blue").save(path / "samples_imle.png")
    board = build_board(collect([runs]))
    assert [(r.sampler, r.n) for r in board.rows] == [("gaussian", 2), ("gmm", 2), ("imle", 2), ("prior", 2)]
    for sampler, fid in samplers.items():  # record(): classifier FID = fid + seed
        assert row(board, "mnist", "vae", sampler).stats["fid_classifier"] == Stat(
            fid + 0.5, math.sqrt(0.5), 2
        )
    assert len(board.tables("mnist")) == 1  # one protocol: the samplers share a table
    assert not [w for w in board.warnings if "different protocols" in w]
    page = to_html(board)
    assert image_colours(page) == [(0, 0, 255), (0, 128, 0)]  # imle's own grid, then prior's samples.png
    assert [c.split("seed")[0] for c in figure_captions(page)] == ["vae · imle", "vae · prior"]
    assert "| vae | gmm | measured | 2 |" in to_markdown(board)
    # A run that names no sampler and has several: which one drew samples.png is unknown, so it is not shown.
    write_run(
        tmp_path / "unnamed", finished("glo", "mnist", 0, **{"fid_inception@a": 1, "fid_inception@b": 2})
    )
    Image.new("RGB", (8, 8), "red").save(tmp_path / "unnamed" / "samples.png")
    assert image_colours(to_html(build_board(collect([tmp_path / "unnamed"])))) == []


def test_a_reevaluation_under_another_protocol_is_shown_in_its_own_table(tmp_path):
    """``genbench.evaluate eval=fast`` on seed 1 leaves its n_gen=500 results under other_protocols: they make a
    row in the n_gen=500 table (averaged with a run evaluated at 500 itself), never with the 10k values."""
    runs = tmp_path / "runs"
    for seed in (0, 1):
        write_run(runs / f"seed{seed}", record("vae", "mnist", seed, {"prior": 10}))
    merged = reevaluate(runs / "seed1", record("vae", "mnist", 1, {"prior": 14}, n_gen=500))
    assert merged["fid_classifier@prior"] == 11  # the run's own value stays
    assert len(merged["other_protocols"]) == 6  # fid, kid, precision/recall protocols of 2 extractors
    board = build_board(collect([runs]))
    full, fast = board.tables("mnist")
    assert [dict(t.protocols["fid_classifier"])["n_gen"] for t in (full, fast)] == [10000, 500]
    ((own,), (again,)) = full.rows, fast.rows
    assert (own.n, own.reevaluated, own.runs) == (2, 0, (runs / "seed0", runs / "seed1"))
    assert own.stats["fid_classifier"] == Stat(10.5, math.sqrt(0.5), 2)  # the 500-sample 15 is not in it
    assert (again.n, again.reevaluated, again.runs) == (1, 1, (runs / "seed1",))  # six entries, one run
    assert again.stats["fid_classifier"] == Stat(15.0, None, 1) and again.stats["fid_inception"] == Stat(
        43, None, 1
    )
    assert again.stats["kid_classifier"] == Stat(0.14, None, 1) and again.stats["recall_inception"].count == 1
    assert again.stats["train_seconds"] == Stat(200.0, None, 1)  # the run's own training time, once
    assert not [w for w in board.warnings if "different protocols" in w]  # a re-evaluation was asked for
    markdown = to_markdown(board)
    assert "| vae | prior | measured, re-evaluated | 1 |" in markdown and "n_gen=500," in markdown
    # A run evaluated at n_gen=500 itself averages with the re-evaluation, as both used that protocol.
    write_run(runs / "seed2", record("vae", "mnist", 2, {"prior": 16}, n_gen=500))
    board = build_board(collect([runs]))
    (again,) = board.tables("mnist")[1].rows
    assert (again.n, again.reevaluated) == (2, 1) and again.stats["fid_classifier"] == Stat(
        16.5, math.sqrt(4.5), 2
    )
    assert "| vae | prior | measured, re-evaluated (1/2) | 2 |" in to_markdown(board)
    (line,) = [r for r in csv.DictReader(io.StringIO(to_csv(board))) if r["reevaluated"] == "1"]
    assert (line["n"], line["fid_classifier_mean"]) == ("2", "16.5") and "n_gen=500" in line["protocol"]


def test_malformed_other_protocols_are_dropped_with_a_note_each(tmp_path):
    metrics = record("vae", "mnist", 0, {"prior": 10})
    metrics["other_protocols"] = {
        "a": "n_gen=500",
        "b": {"protocol": {"n_gen": 500}, "values": [1]},
        "c": {"protocol": {"n_gen": 500}, "values": {"fid_classifier@prior": "15", "recon_mse_test": 1.0}},
        "d": {"protocol": {"n_gen": 500, "x": [[1]]}, "values": {"fid_classifier@prior": 15}},
    }
    write_run(tmp_path / "runs" / "a", metrics)
    write_run(tmp_path / "runs" / "b", record("vae", "mnist", 1, {"prior": 10}) | {"other_protocols": [1]})
    board = build_board(collect([tmp_path / "runs"]))
    full, fast = board.tables("mnist")
    assert full.rows[0].n == 2 and fast.rows[0].stats["fid_classifier"] == Stat(
        15.0, None, 1
    )  # only "d" read
    assert dict(fast.protocols["fid_classifier"]) == {"n_gen": 500, "x": "[[1]]"}
    where = os.path.relpath(tmp_path / "runs" / "a")
    for start, reason in [
        (f"{where}: other_protocols.a:", "expected {'protocol': mapping, 'values': mapping}, got string"),
        (f"{where}: other_protocols.b:", "got object"),
        (f"{where}: other_protocols.c: fid_classifier@prior:", "expected a number, got string"),
        (f"{where}: other_protocols.c.recon_mse_test:", "not a <metric>@<sampler> key"),
        (f"{os.path.relpath(tmp_path / 'runs' / 'b')}: other_protocols:", "expected a mapping, got list"),
    ]:
        assert [w for w in board.warnings if w.startswith(start) and reason in w], (start, board.warnings)


def test_the_page_inlines_the_static_css_and_js_shipped_as_package_data(tmp_path):
    static = Path(render.__file__).parent / "static"
    css, js = (static / "leaderboard.css").read_text(), (static / "leaderboard.js").read_text()
    page = to_html(build_board(collect([tmp_path])))
    assert f"<style>\n{css}</style>" in page and f"<script>\n{js}</script>" in page
    assert "<link" not in page and "src=" not in page  # one file: nothing to fetch, works offline
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(REPO / "pyproject.toml", "rb") as f:
        package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]["genbench.leaderboard"]
    shipped = {p.name for pattern in package_data for p in static.parent.glob(pattern)}
    assert shipped == {"leaderboard.css", "leaderboard.js"}  # a wheel carries what the page inlines


def sample_grid(path: Path, seed: int, ink: str = "white", cells: int = 8, cell: int = 56) -> None:
    """A PNG shaped like genbench's samples.png (8 x 8 cells of 56 px, a caption strip on top) with a random
    digit-like stroke in each cell, so the gallery is judged on what it will really show."""
    rng = random.Random(seed)
    pad, strip = 2, 22
    side = cells * (cell + pad) + pad
    image = Image.new("RGB", (side, side + strip), "white")
    draw = ImageDraw.Draw(image)
    draw.text((6, 5), f"samples (seed {seed}), {cells * cells} draws", fill="black")
    for r in range(cells):
        for c in range(cells):
            x, y = pad + c * (cell + pad), strip + pad + r * (cell + pad)
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill="black")
            points = [(x + rng.randint(12, cell - 12), y + rng.randint(8, cell - 8)) for _ in range(4)]
            draw.line(points, fill=ink, width=6, joint="curve")
    image.save(path)


def reevaluate(path: Path, fresh: dict) -> dict:
    """What ``genbench.evaluate`` leaves in ``path``'s metrics.json after evaluating it again: the ``@`` values and
    protocols of ``fresh`` merged in by the real merge (a value of another protocol goes to other_protocols)."""
    results = {k: v for k, v in fresh.items() if "@" in k} | {"protocols": fresh["protocols"]}
    merged = merge_metrics(json.loads((path / "metrics.json").read_text()), results)
    (path / "metrics.json").write_text(json.dumps(merged))
    return merged


def screenshot_runs(base: Path) -> Path:
    """Two datasets, four models (GLO with two samplers: five rows) over three seeds with real-looking records and
    sample grids; a quick evaluation at n_gen=1000 and a re-evaluation of one run at n_gen=500, each of which
    must land in a table of its own."""
    runs = base / "runs"
    models = {
        "vae": {"prior": 40},
        "mmd_vae": {"prior": 35},
        "glo": {"gaussian": 50, "imle": 12},
        "alae": {"prior": 28},
    }
    for data in ("mnist", "fashion_mnist"):
        for i, (model, samplers) in enumerate(models.items()):
            for seed in range(3):
                metrics = record(model, data, seed, samplers) | {"sampler": next(iter(samplers))}
                path = write_run(runs / data / model / f"seed{seed}", metrics)
                sample_grid(path / "samples.png", 10 * i + seed)
                if model == "glo":
                    sample_grid(path / "samples_imle.png", 100 + seed, ink="#ffd27f")
    write_run(runs / "mnist" / "vae" / "quick", record("vae", "mnist", 9, {"prior": 41}, n_gen=1000))
    reevaluate(runs / "mnist" / "vae" / "seed0", record("vae", "mnist", 0, {"prior": 45}, n_gen=500))
    return runs


GALLERY = """return [...document.querySelectorAll('div.protocol-table')].map(block => [
    block.querySelector('table.board').id,
    [...block.querySelectorAll('figure.samples')].map(f => {
        const img = f.querySelector('img'), box = img.getBoundingClientRect();
        return [f.querySelector('figcaption').innerText, img.complete, img.naturalWidth, box.width, box.height];
    })])"""


def test_html_gallery_protocol_once_per_table_and_compact_rows(browser, tmp_path):
    board = make_board([screenshot_runs(tmp_path)], PUBLISHED)
    write_board(board, tmp_path / "board")
    browser.load((tmp_path / "board" / "leaderboard.html").as_uri())
    tables = browser.js(
        """return [...document.querySelectorAll('table.board')].map(t => [t.id,
             t.closest('div.protocol-table').querySelectorAll('details.protocol').length,
             t.closest('div.protocol-table').querySelector('details.protocol').open,
             Math.max(...[...t.tBodies[0].rows].map(r => r.getBoundingClientRect().height)),
             [...t.tHead.rows[0].cells].map(c => c.dataset.key)])"""
    )
    assert [t[0] for t in tables] == ["board-fashion_mnist", "board-mnist", "board-mnist-2", "board-mnist-3"]
    for _, details, is_open, tallest, keys in tables:
        assert details == 1 and is_open is False  # the protocol once, collapsed
        assert tallest < 40, tallest  # one line of text per row
        assert "protocol" not in keys and "samples" not in keys
    cells = browser.js("return [...document.querySelectorAll('table.board td')].map(td => td.textContent)")
    assert not [c for c in cells if "n_gen" in c or "feature_extractor" in c]
    summaries = browser.js(
        "return [...document.querySelectorAll('details.protocol summary')].map(s => s.textContent)"
    )
    assert [next(n for n in (10000, 1000, 500) if f"n_gen={n}," in s) for s in summaries] == [
        10000,
        10000,
        1000,
        500,
    ]
    galleries = dict(browser.js(GALLERY))
    # record(): Inception FID = 3 x the model's number + seed, so seed 0 is each row's best
    expected = [
        f"{name}\nseed 0, FID (Inception) {fid}\nlowest fid_inception of 3 runs"
        for name, fid in [
            ("alae · prior", 84),
            ("glo · gaussian", 150),
            ("glo · imle", 36),
            ("mmd_vae · prior", 105),
            ("vae · prior", 120),
        ]
    ]
    for table in ("board-fashion_mnist", "board-mnist"):  # every measured row's grid, side by side
        assert [caption for caption, *_ in galleries[table]] == expected
    assert [f[0] for f in galleries["board-mnist-2"]] == []  # the quick run wrote no grid
    assert [f[0] for f in galleries["board-mnist-3"]] == [
        "vae · prior\nseed 0, FID (Inception) 135\nthe only run"
    ]
    for caption, complete, natural, width, height in (f for fs in galleries.values() for f in fs):
        assert complete and natural == 466, caption  # decoded at the grid's own size (under 512 px)
        assert width == 240 and 245 <= height <= 255, (caption, width, height)  # readable: 30 px per digit
    rows_per_line = browser.js(
        "return new Set([...document.querySelectorAll('#board-mnist-block figure')].map(f => f.offsetTop)).size"
    )
    assert rows_per_line <= 2  # five grids side by side in a 1200 px window: two lines at most
    # The first grid as the screen shows it: black cells with light strokes, not a blank or broken image.
    box = browser.js(
        """const img = document.querySelector('#board-mnist-block figure img'); img.scrollIntoView();
           const b = img.getBoundingClientRect(), r = window.devicePixelRatio;
           return [b.left * r, b.top * r, b.right * r, b.bottom * r];"""
    )
    shot = tmp_path / "gallery.png"
    shot.write_bytes(browser.screenshot())
    with Image.open(shot) as image:
        crop = image.convert("L").crop(tuple(round(v) for v in box))
    histogram = crop.histogram()
    dark, light = sum(histogram[:40]), sum(histogram[200:])
    assert (
        crop.width >= 240
        and dark > 0.4 * crop.width * crop.height
        and light > 0.05 * crop.width * crop.height
    )
    browser.click(
        "#board-mnist-block figure img"
    )  # enlarged on click, to its own size or twice the gallery's
    assert browser.js("return document.querySelector('#board-mnist-block figure img').width") == 480


def test_empty_roots_still_write_a_board(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path), "--no-published"]) == 0
    assert "No finished runs found." in capsys.readouterr().out
    assert all((tmp_path / n).is_file() for n in ("leaderboard.md", "leaderboard.csv", "leaderboard.html"))


# ---------------------------------------------------------------------------------------------------- Chromium
class WebDriver:
    """A minimal W3C WebDriver client over chromedriver (no selenium): enough to load, click, query, screenshot."""

    def __init__(self, profile: Path):
        driver = shutil.which("chromedriver")
        browser = next(
            (p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium")) if p and Path(p).exists()),
            None,
        )
        assert driver and browser, f"headless Chromium and chromedriver are needed; {APT_HINT}"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.process = subprocess.Popen(
            [driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.base = f"http://127.0.0.1:{port}"
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.call("GET", "/status")["ready"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "chromedriver did not start"
            time.sleep(0.1)
        args = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,900",
        ]  # fmt: skip
        options = {"binary": browser, "args": args}
        capabilities = {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}
        self.session = self.call("POST", "/session", {"capabilities": capabilities})["sessionId"]

    def call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with self.opener.open(request, timeout=30) as response:
            return json.loads(response.read())["value"]

    def do(self, method: str, path: str, body: dict | None = None):
        return self.call(method, f"/session/{self.session}{path}", body)

    def load(self, url: str) -> None:
        self.do("POST", "/url", {"url": "about:blank"})  # a full reload even when only the hash differs
        self.do("POST", "/url", {"url": url})

    def js(self, script: str, *args):
        return self.do("POST", "/execute/sync", {"script": script, "args": list(args)})

    def click(self, css: str) -> None:
        element = self.do("POST", "/element", {"using": "css selector", "value": css})
        self.do("POST", f"/element/{next(iter(element.values()))}/click", {})

    def screenshot(self) -> bytes:
        return base64.b64decode(self.do("GET", "/screenshot"))

    def quit(self) -> None:
        try:
            self.do("DELETE", "")
        finally:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> str:
    base = tmp_path_factory.mktemp("html")
    board = make_board(make_runs(base), PUBLISHED)
    write_board(board, base / "board")
    return (base / "board" / "leaderboard.html").as_uri()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = WebDriver(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


COLUMN = """
const table = document.getElementById(arguments[0]);
const index = [...table.tHead.rows[0].cells].findIndex(th => th.dataset.key === arguments[1]);
return [...table.tBodies[0].rows].map(r => r.cells[index].dataset.v);
"""


def test_html_tables_rows_and_gallery(browser, page):
    browser.load(page)
    rows = browser.js(
        "return Object.fromEntries([...document.querySelectorAll('table')].map(t => [t.id, t.rows.length]))"
    )
    # header + measured rows + the comparable published rows (MNIST: GLANN's two; Fashion-MNIST's Inception FID has
    # no recorded protocol, so none); problems: header + failed, running, 2 unfinished, 2 corrupt
    assert rows == {"board-fashion_mnist": 1 + 2, "board-mnist": 1 + 3 + 2, "problems-table": 1 + 6}
    apart = browser.js(
        "return [...document.querySelectorAll('.published-apart li')].map(li => li.textContent)"
    )
    assert len(apart) == 2 + 4 and all("Apart:" in line for line in apart)  # Lucic's VAE and GAN on MNIST
    images = browser.js(
        """return [...document.images].map(i => [i.complete, i.naturalWidth, i.getBoundingClientRect().width,
             i.className, i.closest('div.protocol-table').id, i.closest('figure').innerText])"""
    )
    # the one row with a samples.png, decoded from its inline data URI; a 32 px grid shown 240 px wide, unblurred
    caption = "vae · prior\nseed 1, FID (classifier) 12\nlowest fid_classifier of 2 runs with a grid (of 3)"
    assert images == [[True, 32, 240, "pixelated", "board-mnist-block", caption]]
    assert browser.js("return document.querySelectorAll('svg').length") == 0
    assert browser.js("return performance.getEntriesByType('resource').length") == 0  # nothing fetched


@pytest.mark.parametrize("descending", [False, True])
def test_html_sort_from_url_hash(browser, page, descending):
    browser.load(page + ("#sort=-fid_inception" if descending else "#sort=fid_inception"))
    values = browser.js(COLUMN, "board-mnist", "fid_inception")
    numbers = [float(v) for v in values if v]
    assert numbers == sorted(numbers, reverse=descending) and len(numbers) == 4
    assert values[len(numbers) :] == [""]  # the vae row without an Inception FID sorts last either way


def test_html_sort_by_clicking_headers(browser, page):
    browser.load(page)
    before = browser.js(COLUMN, "board-mnist", "fid_inception")
    header = "#board-mnist th[data-key='fid_inception']"
    browser.click(header)
    ascending = browser.js(COLUMN, "board-mnist", "fid_inception")
    assert ascending != before
    assert [float(v) for v in ascending if v] == [8.6, 10.0, 49.6, 51.0] and ascending[-1] == ""
    assert (
        browser.js("return document.querySelector(arguments[0]).getAttribute('aria-sort')", header)
        == "ascending"
    )
    browser.click(header)
    descending = browser.js(COLUMN, "board-mnist", "fid_inception")
    assert [float(v) for v in descending if v] == [51.0, 49.6, 10.0, 8.6] and descending[-1] == ""
    browser.click("#board-mnist th[data-key='model']")
    models = browser.js(
        "return [...document.querySelectorAll('#board-mnist tbody tr')].map(r => r.cells[0].textContent)"
    )
    assert models == sorted(models)


def test_html_screenshot(browser, page, tmp_path):
    browser.load(page)
    shot = tmp_path / "shot.png"
    shot.write_bytes(browser.screenshot())
    with Image.open(shot) as image:
        assert image.width >= 1000 and image.height >= 600
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50  # text, table shading and a grid, not a blank page
    assert shot.stat().st_size > 10_000


def test_a_run_killed_while_running_is_listed_as_killed(tmp_path):
    """SIGKILL leaves metrics.json saying 'running'; the board tells a dead process from a live one."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    base = {"status": "running", "model": "vae", "data": "mnist", "seed": 0, "host": socket.gethostname()}
    write_run(tmp_path / "dead", {**base, "pid": dead.pid})
    write_run(tmp_path / "live", {**base, "pid": os.getpid()})
    problems = {p.path.name: (p.status, p.error) for p in collect([tmp_path]).problems}
    assert problems["dead"][0] == "killed" and "resume=true" in problems["dead"][1]
    assert problems["live"][0] == "running"


def test_a_note_shared_by_rows_is_listed_once_naming_them():
    from types import SimpleNamespace

    from genbench.leaderboard.text import table_notes

    rows = [
        SimpleNamespace(model="vae", sampler="prior", notes=("fid_inception skipped: no weights",)),
        SimpleNamespace(model="glo", sampler="gmm", notes=("fid_inception skipped: no weights", "other")),
    ]
    assert table_notes(rows) == ["vae/prior, glo/gmm: fid_inception skipped: no weights", "glo/gmm: other"]


def test_a_seed_in_a_protocol_record_does_not_split_the_seeds(tmp_path):
    """Path-length records of older runs carried the run's seed: the seeds must still average into one row."""
    for seed in (0, 1):
        metrics = finished("glo", "mnist", seed)
        metrics["path_length_classifier@gaussian"] = 10.0 + seed
        metrics["protocols"] = {"path_length_classifier@gaussian": {"n_pairs": 2000, "seed": seed}}
        write_run(tmp_path / f"seed{seed}", metrics)
    board = build_board(collect([tmp_path]))
    (only,) = [r for r in board.rows if r.sampler == "gaussian"]
    assert only.n == 2 and only.stats["path_length_classifier"].mean == 10.5


def test_a_protocol_field_naming_the_rows_sampler_does_not_split_tables(tmp_path):
    """Older path-length records named the sampler in `codes`: a model's samplers still share one table, while a
    real difference (codes encoded from images) still splits."""
    metrics = finished("glo", "mnist", 0)
    metrics["protocols"] = {}
    for sampler, codes in [
        ("gaussian", "model.sample_codes (gaussian)"),
        ("gmm", "the gmm sampler fitted to the codes"),
    ]:
        metrics[f"path_length_classifier@{sampler}"] = 10.0
        metrics["protocols"][f"path_length_classifier@{sampler}"] = {"n_pairs": 2000, "codes": codes}
    write_run(tmp_path / "a", metrics)
    assert len(build_board(collect([tmp_path])).tables("mnist")) == 1
    other = finished("vae", "mnist", 0, **{"path_length_classifier@prior": 3.0})
    other["protocols"] = {
        "path_length_classifier@prior": {"n_pairs": 2000, "codes": "model.encode of 4000 images"}
    }
    write_run(tmp_path / "b", other)
    assert len(build_board(collect([tmp_path])).tables("mnist")) == 2
