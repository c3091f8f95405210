"""`snnopt train`: metrics, plots and checkpoints; exact resume; data-parallel gradients; bad input."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

import snnopt
from snnopt.cli import main
from snnopt.train import TrainConfig, Trainer, train
from snnopt.train import distributed
from snnopt.train.loop import logits_of
from snnopt.train.presets import build_model

SMALL = ["--steps", "20", "--batch-size", "32", "--no-progress"]


def test_train_one_epoch_writes_metrics_plots_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--mode", "sparse", "--out", str(out), *SMALL]) == 0
    assert "test accuracy" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["mode"] == "sparse" and metrics["compiled_mode"] == "sparse"
    (epoch,) = metrics["epochs"]
    assert epoch["epoch"] == 1 and 0 <= epoch["test_acc"] <= 1 and epoch["train_loss"] > 0
    assert epoch["samples_per_s"] > 0
    assert set(epoch["spike_rate"]) == {"lif1", "lif2"} and all(0 < r < 1 for r in epoch["spike_rate"].values())
    assert epoch["active_fraction"] and all(0 < f < 1 for f in epoch["active_fraction"].values())
    for name in ("loss.png", "accuracy.png", "spike_rate.png", "active_fraction.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, name
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 1 and set(state["model"]) == set(build_model("mlp", (100,), 10, 0).state_dict())
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_resume_continues_exactly(tmp_path):
    common = dict(epochs=3, batch_size=32, steps=20, hidden=32, progress=False, mode="dense",
                  data_options={"n_train_per_class": 12, "n_test_per_class": 4})
    straight = train(TrainConfig(out=str(tmp_path / "a"), **common))
    train(TrainConfig(out=str(tmp_path / "b"), **{**common, "epochs": 1}))
    resumed = train(TrainConfig(out=str(tmp_path / "b"), resume=True, **common))
    assert [h["epoch"] for h in resumed] == [1, 2, 3]
    for a, b in zip(straight, resumed):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "last_loss", "spike_rate"):
            assert a[key] == b[key], (a["epoch"], key)
    final_a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    final_b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    for name, value in final_a["model"].items():
        assert torch.equal(value, final_b["model"][name]), name


def test_resume_refuses_another_configuration(tmp_path):
    common = dict(epochs=1, batch_size=32, steps=20, hidden=16, progress=False,
                  data_options={"n_train_per_class": 4, "n_test_per_class": 2})
    train(TrainConfig(out=str(tmp_path), **common))
    with pytest.raises(ValueError, match="mode='dense', not 'sparse'"):
        train(TrainConfig(out=str(tmp_path), resume=True, mode="sparse", **{**common, "epochs": 2}))
    with pytest.raises(ValueError, match="no checkpoint"):
        train(TrainConfig(out=str(tmp_path / "empty"), resume=True, **common))


def test_user_model_file(tmp_path):
    (tmp_path / "net.py").write_text(
        "from torch import nn\nimport snnopt\n\n"
        "def make(input_shape, n_classes):\n"
        "    return nn.Sequential(nn.Linear(input_shape[0], 24), snnopt.nn.LIF(0.9), nn.Linear(24, n_classes),\n"
        "                         snnopt.nn.LI(0.9))\n")
    history = train(TrainConfig(model=f"{tmp_path / 'net.py'}:make", epochs=1, batch_size=32, steps=20, out=None,
                                progress=False, data_options={"n_train_per_class": 4, "n_test_per_class": 2}))
    assert history[0]["train_loss"] > 0 and "0" not in history[0]["spike_rate"] and "1" in history[0]["spike_rate"]


@pytest.mark.parametrize("args, message", [
    (["--model", "transformer"], "unknown model preset 'transformer'"),
    (["--model", "nothere.py:make"], "does not exist"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--dataset", "shd"], "does not exist"),
])
def test_bad_input_is_reported_and_leaves_no_checkpoint(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), "--data-dir", str(tmp_path / "data"), *SMALL,
                 *args]) == 1
    assert message in capsys.readouterr().out
    assert not (out / "checkpoint.pt").exists()


def test_corrupt_dataset_leaves_no_checkpoint(tmp_path, capsys):
    folder = tmp_path / "data" / "NMNIST"
    for split in ("Train", "Test"):
        (folder / split / "3").mkdir(parents=True)
        (folder / split / "3" / "00001.bin").write_bytes(b"\x01\x02\x03\x04")  # not whole 5-byte records
    out = tmp_path / "run"
    assert main(["train", "--dataset", "nmnist", "--data-dir", str(tmp_path / "data"), "--model", "mlp",
                 "--out", str(out), "--epochs", "1", *SMALL]) == 1
    assert "00001.bin" in capsys.readouterr().out
    assert not out.exists() or not any(out.iterdir())


def test_missing_function_in_model_file(tmp_path, capsys):
    (tmp_path / "net.py").write_text("def other():\n    return None\n")
    assert main(["train", "--model", f"{tmp_path / 'net.py'}:make", "--out", str(tmp_path / "run"), *SMALL]) == 1
    assert "defines no function 'make'" in capsys.readouterr().out


# -- data parallel -------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(seed=3, batch=8, steps=20, n_in=100):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(steps, batch, n_in, generator=g) < 0.1).float()
    y = torch.randint(0, 10, (batch,), generator=g)
    return x, y


def _gradients(mode: str, x, y, ctx: distributed.Context) -> dict:
    model = build_model("mlp", (100,), 10, seed=0, hidden=32)
    net = distributed.wrap(snnopt.compile(model, mode=mode, example_inputs=(x,)), ctx)
    F.cross_entropy(logits_of(net(x)), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _worker(rank: int, world: int, port: int, mode: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = distributed.setup("cpu")
    try:
        x, y = _batch()
        shard = slice(rank * 4, rank * 4 + 4)
        grads = _gradients(mode, x[:, shard].contiguous(), y[shard], ctx)
        if ctx.main:
            torch.save(grads, out)
    finally:
        distributed.teardown(ctx)


@pytest.mark.parametrize("mode", ["dense", "sparse", "rate"])
def test_two_process_gloo_gradients_equal_one_process_on_the_global_batch(mode, tmp_path):
    out = str(tmp_path / "grads.pt")
    mp.spawn(_worker, args=(2, _free_port(), mode, out), nprocs=2, join=True)
    parallel = torch.load(out, weights_only=True)
    x, y = _batch()
    single = _gradients(mode, x, y, distributed.Context())
    assert set(parallel) == set(single)
    for name, g in single.items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(parallel[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_trainer_reports_the_compiled_mode(tmp_path):
    trainer = Trainer(TrainConfig(mode="rate", epochs=1, batch_size=32, steps=20, hidden=16, out=None,
                                  progress=False, data_options={"n_train_per_class": 4, "n_test_per_class": 2}))
    assert trainer.report.mode == "rate"
