"""The leaderboard on hand-made run directories: grouping, mean/std, problems, published rows, the three files, and
the HTML page in headless Chromium (rows, sorting by hash and by click, thumbnails, plot, screenshot).

Chromium tests need Debian's `chromium` and `chromium-driver` (apt-get install -y chromium chromium-driver).
"""

from __future__ import annotations

import base64
import csv
import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from genbench.leaderboard.__main__ import main, make_board, write_board
from genbench.leaderboard.collect import collect
from genbench.leaderboard.published import load_published, parse_published
from genbench.leaderboard.render import to_html, to_markdown
from genbench.leaderboard.stats import MEASURED, Stat, build_board, summarise

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


def make_runs(base: Path) -> tuple[Path, Path]:
    """Two roots: vae and glo on mnist and fashion_mnist over seeds, plus failed, running, unfinished, corrupt runs."""
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
        metrics["protocols"] = {
            "fid_classifier@prior": {"n_gen": 10000, "n_ref": 10000, "reference_split": "test"}
        }
        metrics["skipped"] = {"fid_inception": "Inception weights not found: /x"}
        write_run(outputs / "vae" / "mnist" / f"seed{seed}", metrics, samples=colour)
    sweep = multirun / "2024-01-01_00-00-00"
    for seed, gaussian, imle, secs in [(0, 50, 9, 1000), (1, 52, 11, 3000)]:
        metrics = finished("glo", "mnist", seed, recon_mse_test=0.5, train_seconds=secs)
        metrics |= {
            "fid_inception@gaussian": gaussian,
            "fid_inception@imle": imle,
            "fid_classifier@gaussian": 5,
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
    assert (
        vae.samples is not None and vae.samples.parent.name == "seed1"
    )  # lowest FID among runs with samples
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


def test_summarise_keeps_a_diverged_run_visible():
    stat = summarise([1.0, math.nan])
    assert math.isnan(stat.mean) and math.isnan(stat.std) and stat.count == 2


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


def test_html_tables_rows_thumbnails_and_plot(browser, page):
    browser.load(page)
    rows = browser.js(
        "return Object.fromEntries([...document.querySelectorAll('table')].map(t => [t.id, t.rows.length]))"
    )
    # header + measured rows + 4 published rows; problems: header + failed, running, 2 unfinished, 2 corrupt
    assert rows == {"board-fashion_mnist": 1 + 2 + 4, "board-mnist": 1 + 3 + 4, "problems-table": 1 + 6}
    images = browser.js(
        "return [...document.images].map(i => [i.complete, i.naturalWidth, i.closest('tr').cells[0].textContent])"
    )
    assert images == [[True, 32, "vae"]]  # the one row with a samples.png, decoded from its inline data URI
    labels = browser.js(
        "return [...document.querySelectorAll('#data-mnist svg text.label')].map(t => t.textContent)"
    )
    assert sorted(labels) == [
        "glo/gaussian",
        "glo/imle",
    ]  # inception FID present: the classifier-only vae is not mixed in
    assert browser.js("return performance.getEntriesByType('resource').length") == 0  # nothing fetched


@pytest.mark.parametrize("descending", [False, True])
def test_html_sort_from_url_hash(browser, page, descending):
    browser.load(page + ("#sort=-fid_inception" if descending else "#sort=fid_inception"))
    values = browser.js(COLUMN, "board-mnist", "fid_inception")
    numbers = [float(v) for v in values if v]
    assert numbers == sorted(numbers, reverse=descending) and len(numbers) == 6
    assert values[len(numbers) :] == [""]  # the vae row without an Inception FID sorts last either way


def test_html_sort_by_clicking_headers(browser, page):
    browser.load(page)
    before = browser.js(COLUMN, "board-mnist", "fid_inception")
    header = "#board-mnist th[data-key='fid_inception']"
    browser.click(header)
    ascending = browser.js(COLUMN, "board-mnist", "fid_inception")
    assert ascending != before
    assert [float(v) for v in ascending if v] == [6.7, 8.6, 10.0, 23.8, 49.6, 51.0] and ascending[-1] == ""
    assert (
        browser.js("return document.querySelector(arguments[0]).getAttribute('aria-sort')", header)
        == "ascending"
    )
    browser.click(header)
    descending = browser.js(COLUMN, "board-mnist", "fid_inception")
    assert [float(v) for v in descending if v] == [51.0, 49.6, 23.8, 10.0, 8.6, 6.7] and descending[-1] == ""
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
    assert colours is None or len(colours) > 50  # text, table shading and plot, not a blank page
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
