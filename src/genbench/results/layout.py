"""The layout file of ``python -m genbench.results``: which runs make which section of the results, in YAML.

Every key is checked: an unknown key, a missing required one or a value of the wrong type stops the renderer with
one line (:class:`LayoutError`) naming the file, the section and the key. The schema::

    title: genbench results              # required: the README's and the page's title
    intro: "..."                         # optional paragraph under the title
    commands:                            # optional: the commands that produced the runs, shown verbatim
      - make results
    sections:                            # required, at least one
      - id: digits                       # required, unique, letters, digits, _ and -: stem of the figures' names
        title: "MNIST and Fashion-MNIST" # required
        roots: [outputs/results/digits]  # required, at least one: folders searched for runs, relative to the
                                         #   current folder; each must exist
        text: "..."                      # optional paragraph under the section's title
        samples_figure: true             # optional (false): samples_<id>_<data>.png, one per dataset
        curves: [fid_classifier]         # optional (none): curves_<id>_<data>.png (one panel per metric) and the
                                         #   table of the curves' final points, per dataset
        columns: [fid_, recall_classifier]  # optional (null: every metric): metric keys or key prefixes the
                                         #   tables show
        compare:                         # optional: a compact table per dataset of these metrics for these
          title: "Figure 4"              #   models, in this order (title optional)
          metrics: [recon_mse_train, recon_mse_test, path_length_classifier]
          models: [glo, incremental_glo]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genbench.leaderboard.collect import clip

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class LayoutError(ValueError):
    """A layout file that does not follow the schema, or names a run root that does not exist: one line."""


@dataclass(frozen=True)
class Compare:
    metrics: tuple[str, ...]
    models: tuple[str, ...]
    title: str = ""


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    roots: tuple[Path, ...]
    text: str = ""
    samples_figure: bool = False
    curves: tuple[str, ...] = ()
    columns: tuple[str, ...] | None = None  # None: every metric
    compare: Compare | None = None


@dataclass(frozen=True)
class Layout:
    title: str
    sections: tuple[Section, ...]
    intro: str = ""
    commands: tuple[str, ...] = ()


def _keys(where: str, value: Any, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, Any]:
    """``value`` as a mapping holding every ``required`` key and no key outside ``required + optional``."""
    if not isinstance(value, dict):
        raise LayoutError(f"{where}: expected a mapping, got {type(value).__name__}")
    allowed = (*required, *optional)
    for key in value:
        if key not in allowed:
            raise LayoutError(f"{where}: unknown key {str(key)!r} (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in value:
            raise LayoutError(f"{where}: missing key {key!r}")
    return value


def _text(where: str, key: str, value: Any, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise LayoutError(f"{where}: {key} must be {'non-empty ' if required else ''}text, got {value!r}")
    return value


def _texts(where: str, key: str, value: Any, required: bool = False) -> tuple[str, ...]:
    if value is None and not required:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise LayoutError(f"{where}: {key} must be a list of non-empty texts, got {value!r}")
    if required and not value:
        raise LayoutError(f"{where}: {key} must name at least one")
    return tuple(value)


def _compare(where: str, value: Any) -> Compare | None:
    if value is None:
        return None
    where = f"{where}: compare"
    value = _keys(where, value, ("metrics", "models"), ("title",))
    return Compare(
        metrics=_texts(where, "metrics", value["metrics"], required=True),
        models=_texts(where, "models", value["models"], required=True),
        title=_text(where, "title", value.get("title")),
    )


def _section(where: str, value: Any) -> Section:
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        where = f"{where} ({clip(value['id'], 64)})"
    value = _keys(
        where, value, ("id", "title", "roots"), ("text", "samples_figure", "curves", "columns", "compare")
    )
    section_id = _text(where, "id", value["id"], required=True)
    if not ID_PATTERN.fullmatch(section_id):
        raise LayoutError(f"{where}: id {section_id!r} must be 1 to 64 letters, digits, '_' or '-'")
    samples_figure = value.get("samples_figure", False)
    if not isinstance(samples_figure, bool):
        raise LayoutError(f"{where}: samples_figure must be true or false, got {samples_figure!r}")
    columns = value.get("columns")
    return Section(
        id=section_id,
        title=_text(where, "title", value["title"], required=True),
        roots=tuple(Path(r) for r in _texts(where, "roots", value["roots"], required=True)),
        text=_text(where, "text", value.get("text")),
        samples_figure=samples_figure,
        curves=_texts(where, "curves", value.get("curves")),
        columns=None if columns is None else _texts(where, "columns", columns),
        compare=_compare(where, value.get("compare")),
    )


def parse_layout(value: Any, where: str = "layout") -> Layout:
    """A layout from its parsed YAML; raises :class:`LayoutError` on anything outside the schema."""
    value = _keys(where, value, ("title", "sections"), ("intro", "commands"))
    sections = value["sections"]
    if not isinstance(sections, list) or not sections:
        raise LayoutError(f"{where}: sections must be a list of at least one section")
    parsed = tuple(_section(f"{where}: sections[{i}]", s) for i, s in enumerate(sections))
    ids = [s.id for s in parsed]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise LayoutError(f"{where}: section id {repeated[0]!r} is used more than once")
    return Layout(
        title=_text(where, "title", value["title"], required=True),
        sections=parsed,
        intro=_text(where, "intro", value.get("intro")),
        commands=_texts(where, "commands", value.get("commands")),
    )


def load_layout(path: str | Path) -> Layout:
    """Read and check the layout file ``path`` (YAML)."""
    import yaml

    path = Path(path)
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise LayoutError(f"{path}: cannot read the layout: {err.strerror or err}") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise LayoutError(f"{path}: not valid YAML{at}: {getattr(err, 'problem', None) or err}") from err
    return parse_layout(value, str(path))


def check_roots(layout: Layout) -> None:
    """Raise :class:`LayoutError` for the first run root that is not a folder (a typo would give empty tables)."""
    for i, section in enumerate(layout.sections):
        for root in section.roots:
            if not root.is_dir():
                raise LayoutError(
                    f"sections[{i}] ({section.id}): run root {root} does not exist "
                    f"(roots are relative to the current folder, {Path.cwd()})"
                )
