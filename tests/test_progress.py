"""Progress reporting: counts and an ETA at most every `every_s` seconds, a closing line for slow phases."""

from __future__ import annotations

import logging
import time

from genbench.progress import Progress, format_seconds


def test_a_slow_phase_logs_counts_and_an_eta(caplog):
    caplog.set_level(logging.INFO, logger="genbench.progress")
    with Progress(
        "decoding test images", total=5, unit="images", every_s=0.05, quiet_below_s=0.0, bar=False
    ) as p:
        for _ in range(5):
            time.sleep(0.06)
            p.update()
    lines = [r.getMessage() for r in caplog.records]
    progress = [line for line in lines if "ETA" in line]
    assert p.lines == len(progress) >= 3  # every update after the interval, but not the last one
    assert progress[0].startswith("decoding test images: 1/5 images (20%)")
    assert lines[-1].startswith("decoding test images: 5 images in ")


def test_a_fast_phase_says_nothing(caplog):
    caplog.set_level(logging.INFO, logger="genbench.progress")
    with Progress("quick", total=100, bar=False) as p:
        for _ in range(100):
            p.update()
    assert p.lines == 0 and not caplog.records


def test_eta_follows_the_rate():
    p = Progress("x", total=10, bar=False)
    p.started -= 4.0  # 4 s for the first 2 items: 16 s to go
    p.update(2)
    assert abs(p.eta() - 16.0) < 0.5


def test_format_seconds():
    assert [format_seconds(s) for s in (0.42, 42, 185, 3720)] == ["0.4s", "42s", "3m05s", "1h02m"]
