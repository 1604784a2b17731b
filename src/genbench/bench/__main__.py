"""`python -m genbench.bench --help`."""

from genbench.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
