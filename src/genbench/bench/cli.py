"""The command line: options, then the suite, the tables and ``bench.json``. Heavy imports wait until after
parsing, so ``--help`` is instant.

Examples::

    python -m genbench.bench                       # every conf/model/*.yaml, 28 and 64 px, batch 128
    python -m genbench.bench --models vae,glo --sizes 28 --steps 30 --device cuda --out bench-gpu.json
    python -m genbench.bench --quick               # seconds: one size, a few tiny steps
"""

from __future__ import annotations

import argparse
import logging
import warnings

DESCRIPTION = (
    "Training and evaluation throughput and memory of every genbench model: Lightning vs a plain PyTorch loop, "
    "device-resident batches vs a DataLoader, FID vs torch-fidelity, GPU switches. Writes bench.json."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m genbench.bench", description=DESCRIPTION)
    p.add_argument("--models", help="comma-separated conf/model names (default: every conf/model/*.yaml)")
    p.add_argument(
        "--sizes", help="comma-separated image sides: 28 (1x28x28) and/or 64 (3x64x64); default both"
    )
    p.add_argument("--steps", type=int, help="timed training steps per measurement (default 20)")
    p.add_argument("--warmup", type=int, help="untimed steps before them (default 3)")
    p.add_argument("--batch-size", type=int, help="training batch size (default 128)")
    p.add_argument(
        "--repeats", type=int, help="Lightning/plain measurements alternated this many times (default 1)"
    )
    p.add_argument("--eval-samples", type=int, help="images for the sampling and FID timings (default 2000)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument(
        "--data-root", help="real data root (MNIST for 28, CelebA for 64) instead of synthetic images"
    )
    p.add_argument(
        "--glann",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="estimate GLANN's 200-epoch MNIST GLO wall-clock (default: on unless --quick)",
    )
    p.add_argument(
        "--gpu-variants",
        help="comma-separated speed switches (default on cuda: bf16, channels_last, compile_model, compile_nets, "
        "bf16+channels_last+compile_nets; on cpu: none unless named here)",
    )
    p.add_argument(
        "--eval-protocol",
        action="store_true",
        help="also time the default evaluation of VAE and GLO on real MNIST (needs --data-root or GENBENCH_DATA)",
    )
    p.add_argument(
        "--imle",
        action="store_true",
        help="only GLANN's IMLE fit on 60k MNIST codes (--data-root or GENBENCH_DATA; else synthetic codes)",
    )
    p.add_argument("--quick", action="store_true", help="tiny: size 28, batch 32, 3 steps, 128 eval images")
    p.add_argument("--out", default="bench.json", help="where to write the results (default bench.json)")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "sizes": "28" if quick else "28,64",
        "steps": 3 if quick else 20,
        "warmup": 1 if quick else 3,
        "batch_size": 32 if quick else 128,
        "repeats": 1,
        "eval_samples": 128 if quick else 2000,
        "glann": not quick,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.models = args.models.split(",") if args.models else None  # None: every conf/model/*.yaml
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.gpu_variants = args.gpu_variants.split(",") if args.gpu_variants else None  # None: all
    args.eval_repeats = 1 if quick else 3
    if args.steps < 1 or args.warmup < 1 or args.repeats < 1:
        p.error("--steps, --warmup and --repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.imle:
        return _imle(args)
    from pytorch_lightning.utilities.warnings import PossibleUserWarning

    from genbench.bench.suite import run
    from genbench.bench.tables import format_tables
    from genbench.io import write_json

    for name in ("pytorch_lightning", "lightning_fabric"):  # after their import, which sets them to INFO
        logging.getLogger(name).setLevel(logging.WARNING)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PossibleUserWarning)  # "few workers", "log interval" etc.
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # torch deprecation inside Lightning
        warnings.filterwarnings("ignore", message=".*no `validation_step`.*")  # GLO; validation is off here
        result = run(args)
    write_json(args.out, result)
    print(format_tables(result))
    print(f"\nwrote {args.out}")
    return 0


def _imle(args: argparse.Namespace) -> int:
    import os

    import torch

    from genbench.bench.imle import bench_imle, format_imle
    from genbench.io import write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    root = args.data_root or os.environ.get("GENBENCH_DATA")
    result = bench_imle(root, device, epochs=2 if args.quick else 50)
    write_json(args.out, {"imle": result})
    print(format_imle(result))
    print(f"\nwrote {args.out}")
    return 0
