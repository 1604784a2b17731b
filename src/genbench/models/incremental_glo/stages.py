"""Incremental GLO's stage schedule: which phase (subset k, whole set, encoder) each trainer epoch belongs to.

A function of the epoch alone, so a checkpoint taken mid-stage resumes in that stage.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One phase of training: ``kind`` subset | whole | encoder; ``subset`` the subset trained (subset stages)."""

    number: int  # 1-based position in the schedule, as logged in train/stage
    name: str  # subset1 .. subsetN, whole, encoder
    kind: str
    subset: int
    first_epoch: int
    epochs: int


def schedule(n_stages: int, subset_epochs: int, final_epochs: int, encoder_epochs: int) -> list[Stage]:
    """The stages in order, with their epoch ranges; stages of zero epochs are kept (and skipped by ``stage_at``)."""
    kinds = [(f"subset{s + 1}", "subset", s, subset_epochs) for s in range(n_stages)]
    kinds += [("whole", "whole", -1, final_epochs), ("encoder", "encoder", -1, encoder_epochs)]
    stages, first = [], 0
    for number, (name, kind, subset, epochs) in enumerate(kinds, start=1):
        stages.append(Stage(number, name, kind, subset, first, epochs))
        first += epochs
    return stages


def stage_at(stages: list[Stage], epoch: int) -> Stage:
    """The stage of ``epoch``; epochs past the schedule stay in its last non-empty stage."""
    active = [s for s in stages if s.epochs > 0]
    for stage in active:
        if epoch < stage.first_epoch + stage.epochs:
            return stage
    return active[-1]


__all__ = ["Stage", "schedule", "stage_at"]
