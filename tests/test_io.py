"""Atomic writes: the final mode follows the umask, a kill mid-write leaves the old target and a temp that
``clean_stale_temp_files`` removes, and concurrent runs on a cold cache train a missing classifier once."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from genbench.filelock import exclusive_lock
from genbench.io import (
    STALE_AFTER_S,
    atomic_path,
    clean_stale_temp_files,
    temp_name,
    torch_save,
    write_json,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it after."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


def _env(tmp_path: Path) -> dict[str, str]:
    """The environment of helper processes: genbench importable, a private cache, few threads."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "GENBENCH_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _wait_for(path: Path, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"helper exited with {process.returncode} before writing {path}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout}s")
        time.sleep(0.02)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_written_files_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    expected = 0o666 & ~mask  # 0644, 0640
    write_json(tmp_path / "a.json", {"x": 1})
    torch_save({"t": torch.ones(2)}, tmp_path / "b.pt")
    with atomic_path(tmp_path / "c.txt") as tmp:
        tmp.write_text("c")
    with atomic_path(tmp_path / "d.bin") as tmp:  # a writer that replaces the temp (as torch.hub's download)
        other = tmp_path / "download.partial"
        other.write_bytes(b"d")
        os.chmod(other, 0o600)
        os.replace(other, tmp)
    for name in ("a.json", "b.pt", "c.txt", "d.bin"):
        assert _mode(tmp_path / name) == expected, name
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert torch.equal(torch.load(tmp_path / "b.pt")["t"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.pt", "c.txt", "d.bin"]  # no temp left


def test_failed_block_keeps_the_target_and_leaves_no_temp(tmp_path):
    target = tmp_path / "r.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".r.json.") and tmp.name.endswith(".tmp")
        assert f".{os.getpid()}." in tmp.name
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_clean_stale_temp_files_removes_only_dead_owners(tmp_path):
    dead = _dead_pid()
    sub = tmp_path / "sub"
    sub.mkdir()
    dead_temp = tmp_path / temp_name("metrics.json", pid=dead)
    live_temp = tmp_path / temp_name("metrics.json", pid=os.getpid())
    dead_below = sub / temp_name("last.ckpt", pid=dead)
    foreign_fresh = tmp_path / temp_name("x.json", pid=dead, host="elsewhere")
    foreign_old = tmp_path / temp_name("y.json", pid=dead, host="elsewhere")
    old_style_fresh = tmp_path / ".z.json.ab12cd_9.tmp"  # tempfile.mkstemp's names: no owner
    old_style_old = tmp_path / ".z.json.zz34yy_0.tmp"
    others = [
        tmp_path / name
        for name in (
            "metrics.json",
            "notes.tmp",
            ".hidden.tmp",
            ".z.json.short.tmp",
            f"{dead_temp.name[1:]}",  # no leading dot: not ours
            f"{dead_temp.name}.bak",
        )
    ]
    for path in [
        dead_temp,
        live_temp,
        dead_below,
        foreign_fresh,
        foreign_old,
        old_style_fresh,
        old_style_old,
    ]:
        path.write_text("partial")
    for path in others:
        path.write_text("keep me")
    long_ago = time.time() - STALE_AFTER_S - 60
    for path in (foreign_old, old_style_old, *others):
        os.utime(path, (long_ago, long_ago))
    (tmp_path / temp_name("dir", pid=dead)).mkdir()  # only regular files are removed

    removed = clean_stale_temp_files(tmp_path, recursive=False)
    assert sorted(removed) == sorted([dead_temp, foreign_old, old_style_old])
    assert not dead_temp.exists() and not foreign_old.exists() and not old_style_old.exists()
    assert dead_below.exists()  # not recursive
    assert clean_stale_temp_files(tmp_path) == [dead_below]
    assert live_temp.exists() and foreign_fresh.exists() and old_style_fresh.exists()
    assert all(p.read_text() == "keep me" for p in others)
    assert clean_stale_temp_files(tmp_path) == []
    assert clean_stale_temp_files(tmp_path / "missing") == []


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from genbench.io import atomic_path

    target, ready = sys.argv[1], Path(sys.argv[2])
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            out.write(b"x" * (16 << 20))  # the first half of a big write
            out.flush()
            ready.write_text(str(tmp))
            time.sleep(60)
            out.write(b"x" * (16 << 20))
    """
)


def test_sigkill_mid_write_keeps_the_previous_target(tmp_path):
    target = tmp_path / "run" / "results.json"
    write_json(target, {"epoch": 1})
    ready = tmp_path / "ready"
    writer = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(target), str(ready)], env=_env(tmp_path)
    )
    try:
        _wait_for(ready, 60, writer)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    temp = Path(ready.read_text())
    assert temp.parent == target.parent and temp.stat().st_size == 16 << 20  # left behind, half written
    assert json.loads(target.read_text()) == {"epoch": 1}
    assert clean_stale_temp_files(tmp_path) == [temp]
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.json"]
    assert json.loads(target.read_text()) == {"epoch": 1}


def test_lock_waits_then_gives_up_after_the_timeout(tmp_path, caplog):
    lock = tmp_path / "x.lock"
    with caplog.at_level(logging.INFO, logger="genbench.filelock"):
        with exclusive_lock(lock) as held:
            assert held
            started = time.monotonic()
            with exclusive_lock(lock, timeout=0.3, waiting_message="waiting for the other one") as second:
                assert not second
            assert 0.3 <= time.monotonic() - started < 5
        with exclusive_lock(lock) as again:  # released on exit
            assert again
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("waiting for the other one") == 1
    assert any("gave up waiting" in m for m in messages)


_FAKE_TRAINING = textwrap.dedent(
    """
    import logging, os, sys, time
    from pathlib import Path
    from types import SimpleNamespace

    import torch
    from genbench import classifier

    cache, counter, out, me, other = sys.argv[1:6]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")


    def fake_train(train, test, *args, **kwargs):
        time.sleep(2)
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\\n")
        net = classifier.DigitClassifier(1, 8, 10).eval()
        return net, 0.5, {"seconds": 2.0, "fake": True}


    classifier.train_classifier = fake_train
    split = SimpleNamespace(images=torch.zeros(6, 1, 8, 8, dtype=torch.uint8), labels=torch.arange(6))
    datamodule = SimpleNamespace(
        name="fake", image_size=8, source=SimpleNamespace(has_labels=True), split=lambda which: split
    )
    Path(me).touch()  # start together: both find the cache cold
    deadline = time.monotonic() + 60
    while not Path(other).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    got = classifier.load_or_train(datamodule, "cpu", cache)
    Path(out).write_text(f"{got.test_accuracy} {got.digest} {got.path}")
    """
)


def test_concurrent_cold_cache_trains_the_classifier_once(tmp_path, umask):
    umask(0o022)
    cache = tmp_path / "cache" / "classifiers"
    counter = tmp_path / "trained"
    runs = []
    for i in range(2):
        args = [cache, counter, tmp_path / f"out{i}", tmp_path / f"ready{i}", tmp_path / f"ready{1 - i}"]
        runs.append(
            subprocess.Popen(
                [sys.executable, "-c", _FAKE_TRAINING, *map(str, args)],
                env=_env(tmp_path),
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    logs = []
    for run in runs:
        try:
            _, err = run.communicate(timeout=120)
        finally:
            run.kill()
        logs.append(err)
        assert run.returncode == 0, err
    assert len(counter.read_text().splitlines()) == 1  # trained once
    results = [(tmp_path / f"out{i}").read_text().split() for i in range(2)]
    assert results[0] == results[1]  # both got the one classifier
    assert results[0][0] == "0.5" and results[0][2] == str(cache / "fake-8px.pt")
    waited = [err for err in logs if "held by another genbench process training the same classifier" in err]
    assert len(waited) == 1, logs  # the second waited for the first, then loaded what it saved
    assert "trained by another process" in waited[0]
    assert _mode(cache / "fake-8px.pt") == 0o644 and _mode(cache / "fake-8px.pt.lock") == 0o644
    assert sorted(p.name for p in cache.iterdir()) == ["fake-8px.json", "fake-8px.pt", "fake-8px.pt.lock"]
