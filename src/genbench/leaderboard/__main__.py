"""``python -m genbench.leaderboard [RUN_ROOTS...] [--out DIR]``: write leaderboard.{md,csv,html} and print the md."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from genbench.io import atomic_path
from genbench.leaderboard.collect import collect
from genbench.leaderboard.csv_export import to_csv
from genbench.leaderboard.markdown import to_markdown
from genbench.leaderboard.published import load_published
from genbench.leaderboard.render import to_html
from genbench.leaderboard.stats import Board, build_board

log = logging.getLogger("genbench.leaderboard")

DEFAULT_ROOTS = ("outputs", "multirun")
DEFAULT_PUBLISHED = Path("experiments/published.yaml")
OUTPUT_NAMES = ("leaderboard.md", "leaderboard.csv", "leaderboard.html")


def write_text(path: Path, text: str) -> None:
    """Write through a temp file renamed into place, so a reader never sees half a file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def make_board(roots: Sequence[str | Path], published: Path | None, all_published: bool = False) -> Board:
    collection = collect(roots)
    references = load_published(published) if published is not None else []
    return build_board(collection, references, all_published=all_published)


def write_board(board: Board, out: Path) -> str:
    """Write the three files into ``out``; return the Markdown."""
    markdown = to_markdown(board)
    for name, text in zip(OUTPUT_NAMES, (markdown, to_csv(board), to_html(board)), strict=True):
        write_text(out / name, text)
    return markdown


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m genbench.leaderboard", description=__doc__)
    parser.add_argument(
        "roots",
        nargs="*",
        default=list(DEFAULT_ROOTS),
        help="folders searched for runs (default: outputs multirun)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("."), help="folder for leaderboard.{md,csv,html} (default: .)"
    )
    parser.add_argument(
        "--published", type=Path, default=None, help=f"published numbers YAML (default: {DEFAULT_PUBLISHED})"
    )
    parser.add_argument("--no-published", action="store_true", help="leave published numbers out")
    parser.add_argument(
        "--all-published", action="store_true", help="show published rows of every dataset, measured or not"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    published = args.published
    if args.no_published:
        published = None
    elif published is None:
        published = DEFAULT_PUBLISHED if DEFAULT_PUBLISHED.is_file() else None
        if published is None:
            log.warning(
                "%s not found (run from the repository root or pass --published); no published rows",
                DEFAULT_PUBLISHED,
            )
    board = make_board(args.roots, published, args.all_published)
    markdown = write_board(board, args.out)
    print(markdown)
    log.info("wrote %s into %s", ", ".join(OUTPUT_NAMES), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
