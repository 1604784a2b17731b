"""``python -m genbench.results --layout results/layout.yaml --out results/``: render finished runs into results."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from genbench.results.build import render
from genbench.results.layout import LayoutError, check_roots, load_layout

log = logging.getLogger("genbench.results")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m genbench.results",
        description="Write README.md, results.csv, index.html and figures from the runs a layout file names "
        "(schema: genbench.results.layout).",
    )
    parser.add_argument("--layout", type=Path, required=True, help="the layout file (YAML)")
    parser.add_argument("--out", type=Path, required=True, help="the folder written into")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        layout = load_layout(args.layout)
        check_roots(layout)
    except LayoutError as err:
        raise SystemExit(f"genbench.results: {err}") from None
    files = render(layout, args.out)
    log.info("wrote %d files into %s", len(files), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
