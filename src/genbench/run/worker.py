"""`python -m genbench.run.worker CONFIG`: one extra DDP rank of a run, started by `genbench.run.launcher.LocalRanks`.

CONFIG is the run's resolved config (no Hydra): the worker builds the same objects as rank 0 and joins its process
group through MASTER_ADDR/MASTER_PORT/NODE_RANK/WORLD_SIZE/LOCAL_RANK. It writes nothing to the run directory.
"""

from __future__ import annotations

import logging
import os
import sys

from omegaconf import OmegaConf


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or "LOCAL_RANK" not in os.environ:
        raise SystemExit(
            "usage: LOCAL_RANK=... python -m genbench.run.worker CONFIG (started by genbench, not by hand)"
        )
    rank = os.environ.get("RANK", os.environ["LOCAL_RANK"])
    logging.basicConfig(level=logging.WARNING, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    from genbench.run.outcome import run_entry
    from genbench.train import train

    run_entry(lambda: train(OmegaConf.load(args[0])))


if __name__ == "__main__":
    main()
