"""`make bench` in miniature: a tiny run works, writes valid JSON with every section, and skips what cannot build."""

from __future__ import annotations

import json

import pytest
import torch

from genbench.bench import configs, training
from genbench.bench.cli import main
from genbench.data import ImageArrays
from genbench.interface import GenerativeModel


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = [
        "--quick",
        "--repeats",
        "2",
        "--models",
        "vae,no_such_model",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    return json.loads(out.read_text()), str(out)


def test_quick_run_writes_every_section(quick_run, capsys):
    result, _ = quick_run
    assert set(result) >= {
        "meta",
        "targets",
        "training",
        "data_path",
        "evaluation",
        "glann_mnist_glo",
        "skipped",
    }
    assert result["meta"]["device"] == "cpu" and result["meta"]["sizes"] == [28]
    (cell,) = result["training"]
    assert cell["model"] == "vae" and cell["shape"] == [1, 28, 28]
    for path, steps in (
        ("lightning", 6),
        ("plain", 6),
        ("dataloader", 3),
    ):  # two alternated repeats of 3 steps
        stats = cell[path]
        assert stats["steps"] == steps and stats["images_per_s"] > 0, path
        assert stats["memory"]["peak_mib"] > 0, path
        assert stats["images_per_s"] == pytest.approx(cell["batch_size"] / (stats["step_ms_median"] / 1e3))
    assert cell["lightning_over_plain"] == pytest.approx(
        cell["lightning"]["step_ms_median"] / cell["plain"]["step_ms_median"]
    )
    assert (
        len(cell["lightning"]["repeat_step_ms_medians"]) == len(cell["plain"]["repeat_step_ms_medians"]) == 2
    )
    assert cell["sampling"]["samples_per_s"] > 0
    (data,) = result["data_path"]
    assert data["resident"]["images_per_s"] > 0 and data["dataloader"]["images_per_s"] > 0
    (evaluation,) = result["evaluation"]
    # the same images through the same extractor: both tools must agree on the FID they time
    assert evaluation["fid"] == pytest.approx(evaluation["torch_fidelity_fid"], rel=1e-4)
    assert evaluation["fid_seconds"] > 0 and evaluation["torch_fidelity_seconds"] > 0


def test_a_model_that_cannot_build_is_skipped_with_its_reason(quick_run):
    result, _ = quick_run
    (note,) = [n for n in result["skipped"] if n.get("model") == "no_such_model"]
    assert note["stage"] == "build/fit" and "no_such_model" in note["reason"]
    assert [c["model"] for c in result["training"]] == ["vae"]


def test_every_model_config_is_discovered():
    names = configs.model_names()
    assert {"vae", "mmd_vae"} <= set(names)
    assert names == sorted(p.stem for p in (configs.CONF / "model").glob("*.yaml"))


class _Manual(GenerativeModel):
    """A manual-optimisation model; ``reads_trainer`` makes its step ask the Trainer for something."""

    def __init__(self, reads_trainer: bool = False) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.latent_dim, self.reads_trainer = 2, reads_trainer
        self.net = torch.nn.Linear(4, 4)

    def training_step(self, batch, batch_idx):
        if self.reads_trainer:
            self.trainer.datamodule  # noqa: B018
        opt = self.optimizers()
        loss = self.net(batch.image.flatten(1)).pow(2).mean()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.log("train/loss", loss.detach())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    encode = decode = sample = reconstruct = None


def _arrays() -> ImageArrays:
    return ImageArrays(
        torch.randint(0, 256, (8, 1, 2, 2), dtype=torch.uint8), torch.zeros(8, dtype=torch.long)
    )


def test_plain_loop_runs_a_manual_optimisation_step_without_a_trainer():
    """The plain loop's stand-in host gives training_step its optimisers and backward: weights move."""
    model = _Manual()
    before = model.net.weight.detach().clone()
    stats = training.plain_loop(model, _arrays(), torch.device("cpu"), batch_size=2, warmup=1, steps=2)
    assert stats["steps"] == 2 and not torch.equal(before, model.net.weight)
    assert model.fabric is None  # the stand-in host is detached afterwards


def test_plain_loop_refuses_a_step_that_reads_the_trainer():
    with pytest.raises(AttributeError, match="trainer.datamodule"):
        training.plain_loop(_Manual(reads_trainer=True), _arrays(), torch.device("cpu"), 2, 1, 2)


def test_configured_optimizers_reads_every_lightning_form():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    for configured in (
        opt,
        [opt],
        {"optimizer": opt, "lr_scheduler": sched},
        ([opt], [sched]),
        [{"optimizer": opt}],
    ):
        assert training.configured_optimizers(configured) == [opt]


@pytest.fixture(scope="module")
def every_model_run(tmp_path_factory) -> dict:
    """Every model config, with two of the speed switches, which run on a CPU when named."""
    out = tmp_path_factory.mktemp("bench-all") / "bench.json"
    # 41 batches of 8: enough training images for incremental GLO's curriculum (32 clusters x 4)
    argv = ["--quick", "--steps", "40", "--batch-size", "8", "--device", "cpu", "--out", str(out)]
    argv += ["--gpu-variants", "bf16,channels_last"]
    assert main(argv) == 0
    return json.loads(out.read_text())


def test_every_model_runs_both_paths_and_the_switches(every_model_run):
    result = every_model_run
    assert result["skipped"] == []
    cells = {c["model"]: c for c in result["training"]}
    assert sorted(cells) == configs.model_names()
    for name, cell in cells.items():
        for path in ("lightning", "plain", "dataloader"):
            assert cell[path]["steps"] == 40 and cell[path]["images_per_s"] > 0, (name, path)
        assert cell["lightning_over_plain"] > 0, name
        assert set(cell["gpu_variants"]) == {"fp32", "bf16", "channels_last"}, name
        assert all(v["images_per_s"] > 0 for v in cell["gpu_variants"].values()), name


def test_table_checks_each_target_where_it_applies(every_model_run):
    from genbench.bench.tables import format_tables

    text = format_tables(every_model_run)
    training_table = text.split("\n\n")[1]
    assert training_table.startswith("Training")
    rows = {line.split()[0]: line for line in training_table.splitlines() if line.split()[1:2] == ["28"]}
    # the resident/DL target is judged on the MLP-ALAE and VAE cells only
    assert rows["alae"].count(" ok") + rows["alae"].count("MISS") == 2  # L/plain and resident/DL
    assert rows["glo"].count(" ok") + rows["glo"].count("MISS") == 1  # L/plain only
    assert "Speed switches on cpu" in text


def test_eval_protocol_table_lists_every_evaluator_and_the_total():
    from genbench.bench.eval_protocol import format_eval_protocol

    result = {
        "rows": [
            {
                "model": "vae",
                "evaluators": {"neighbours": 6.5, "fid_classifier": 8.0, "total": 14.5},
                "wall_seconds": 15.0,
            },
            {"model": "glo", "evaluators": {"reconstruction": 300.0, "total": 300.0}, "wall_seconds": 301.0},
        ],
        "classifier_seconds": 230.0,
    }
    lines = format_eval_protocol(result).splitlines()
    assert lines[1] == "| model | fid_classifier | neighbours | reconstruction | total s | wall s |"
    assert lines[3] == "| vae | 8.0 | 6.5 | 0.0 | 14.5 | 15.0 |" and lines[4].startswith(
        "| glo | 0.0 | 0.0 | 300.0 |"
    )
    assert "230s" in lines[-1]
    assert format_eval_protocol({"rows": []}) == ""
