"""`snnopt train`: metrics, plots and checkpoints; exact resume; data-parallel gradients; bad input."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

import snnopt
from snnopt.cli import main
from snnopt.train import TrainConfig, Trainer, train
from snnopt.train import distributed
from snnopt.train.loop import DEFAULT_LR, logits_of
from snnopt.train.plots import plot_figures
from snnopt.train.presets import ConvNet, build_model

from .test_data_tonic import random_camera_events, write_nmnist

SMALL = ["--steps", "20", "--batch-size", "32", "--no-progress"]
TINY_DATA = {"n_train_per_class": 4, "n_test_per_class": 2}


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
    (["--model", "nothere.py"], "expected FILE.py:FUNCTION, got 'nothere.py'"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--dataset", "shd"], "does not exist"),
])
def test_bad_input_is_reported_and_leaves_no_checkpoint(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), "--data-dir", str(tmp_path / "data"), *SMALL,
                 *args]) == 1
    printed = capsys.readouterr()
    assert message in printed.err and not printed.out
    assert not out.exists()


def test_corrupt_dataset_leaves_no_checkpoint(tmp_path, capsys):
    folder = tmp_path / "data" / "NMNIST"
    for split in ("Train", "Test"):
        (folder / split / "3").mkdir(parents=True)
        (folder / split / "3" / "00001.bin").write_bytes(b"\x01\x02\x03\x04")  # not whole 5-byte records
    out = tmp_path / "run"
    assert main(["train", "--dataset", "nmnist", "--data-dir", str(tmp_path / "data"), "--model", "mlp",
                 "--out", str(out), "--epochs", "1", *SMALL]) == 1
    assert "00001.bin" in capsys.readouterr().err
    assert not out.exists()


def test_missing_function_in_model_file(tmp_path, capsys):
    (tmp_path / "net.py").write_text("def other():\n    return None\n")
    assert main(["train", "--model", f"{tmp_path / 'net.py'}:make", "--out", str(tmp_path / "run"), *SMALL]) == 1
    assert "defines no function 'make'" in capsys.readouterr().err


def train_cli(capsys, *args) -> tuple[int, str, str]:
    """``snnopt train ARGS``: the exit status, stdout and stderr."""
    status = main(["train", *args])
    printed = capsys.readouterr()
    return status, printed.out, printed.err


def assert_reported(status: int, out: str, err: str, *fragments: str) -> None:
    """A failure reported on stderr only: exit status 1, no traceback, every fragment in the message."""
    assert status == 1 and not out and "Traceback" not in err
    assert err.startswith("snnopt train: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


@pytest.fixture
def no_data_loading(monkeypatch):
    """Loading data fails the test: the error must be found before."""
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the bad option was reported")
    monkeypatch.setattr("snnopt.train.loop.make_loaders", refuse)


def write_tiny_nmnist(root) -> None:
    """Three train and two test N-MNIST recordings in the dataset's on-disk format."""
    rng = np.random.default_rng(0)
    for split, label, name in (("train", 1, "00001"), ("train", 4, "00002"), ("train", 7, "00003"),
                               ("test", 4, "00004"), ("test", 1, "00005")):
        write_nmnist(root, split, label, name, *random_camera_events(rng, 80, 34, 34, 100_000))


SHAPE_RECORDING_FACTORY = """
import math
from torch import nn
import snnopt


def make(input_shape, n_classes):
    model = nn.Sequential(nn.Flatten(2), nn.Linear(math.prod(input_shape), n_classes), snnopt.nn.LI(0.9))
    model.input_shape = input_shape
    return model
"""


@pytest.mark.parametrize("dataset", ["embedded", "nmnist"])
def test_model_factory_gets_the_frame_shape_of_the_batches(tmp_path, dataset):
    write_tiny_nmnist(tmp_path / "data")
    (tmp_path / "net.py").write_text(SHAPE_RECORDING_FACTORY)
    trainer = Trainer(TrainConfig(dataset=dataset, data_dir=str(tmp_path / "data"), model=f"{tmp_path / 'net.py'}:make",
                                  batch_size=2, steps=4, out=None, progress=False,
                                  data_options=TINY_DATA if dataset == "embedded" else {}))
    x, _ = next(iter(trainer.train_loader))
    assert trainer.model.input_shape == tuple(x.shape[2:])


def test_conv_preset_trains_on_nmnist_frames(tmp_path, capsys):
    write_tiny_nmnist(tmp_path / "data")
    out = tmp_path / "run"
    status, printed, err = train_cli(capsys, "--dataset", "nmnist", "--data-dir", str(tmp_path / "data"), "--model",
                                     "conv", "--steps", "4", "--batch-size", "2", "--epochs", "1", "--no-progress",
                                     "--out", str(out))
    assert status == 0, err
    assert "test accuracy" in printed
    (epoch,) = json.loads((out / "metrics.json").read_text())["epochs"]
    assert set(epoch["spike_rate"]) == {"lif1", "lif2"} and math.isfinite(epoch["train_loss"])
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    expected = ConvNet((2, 34, 34), 10).state_dict()
    assert {k: v.shape for k, v in state["model"].items()} == {k: v.shape for k, v in expected.items()}


def test_conv_preset_refuses_flat_frames(tmp_path, capsys):
    out = tmp_path / "run"
    assert_reported(*train_cli(capsys, "--model", "conv", "--epochs", "1", "--out", str(out), *SMALL),
                    "conv preset takes channels-first frames (C, H, W)", "(100,)", "--model mlp")
    assert not out.exists()


def test_resume_keeps_the_checkpoint_lr_unless_a_new_one_is_given(tmp_path):
    common = dict(batch_size=32, steps=20, hidden=16, progress=False, data_options=TINY_DATA)
    train(TrainConfig(out=str(tmp_path / "kept"), epochs=1, lr=1e-3, **common))
    shutil.copytree(tmp_path / "kept", tmp_path / "changed")
    kept = train(TrainConfig(out=str(tmp_path / "kept"), epochs=2, resume=True, **common))
    changed = train(TrainConfig(out=str(tmp_path / "changed"), epochs=2, resume=True, lr=1e-4, **common))
    assert [h["lr"] for h in kept] == [1e-3, 1e-3]
    assert [h["lr"] for h in changed] == [1e-3, 1e-4]
    for run, lr in (("kept", 1e-3), ("changed", 1e-4)):
        state = torch.load(tmp_path / run / "checkpoint.pt", weights_only=False)
        assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [lr]
        assert state["config"]["lr"] == lr
        assert json.loads((tmp_path / run / "metrics.json").read_text())["config"]["lr"] == lr


def test_new_run_without_lr_uses_the_default(tmp_path):
    (record,) = train(TrainConfig(out=None, epochs=1, batch_size=32, steps=20, hidden=16, progress=False,
                                  data_options=TINY_DATA))
    assert record["lr"] == DEFAULT_LR


UNTRACEABLE = """
from torch import nn
from snnopt.nn import LIF


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.lif1, self.fc2 = nn.Linear(100, 32), LIF(beta=0.9), nn.Linear(32, 10)

    def forward(self, x):
        s = self.lif1(self.fc1(x))
        if s.sum() > 0:
            s = s * 2
        return self.fc2(s).mean(0)


def make():
    return DataDependent()
"""


def test_untraceable_model_is_reported_with_the_node(tmp_path, capsys):
    (tmp_path / "net.py").write_text(UNTRACEABLE)
    out = tmp_path / "run"
    assert_reported(*train_cli(capsys, "--model", f"{tmp_path / 'net.py'}:make", "--out", str(out), *SMALL),
                    "cannot compile the model", "after node `gt`", "control flow")
    assert not out.exists()


@pytest.mark.parametrize("signature", ["a, b, c", "input_shape"])
def test_factory_signature_mismatch_states_the_calling_convention(tmp_path, capsys, signature):
    (tmp_path / "net.py").write_text(f"from torch import nn\n\ndef make({signature}):\n    return nn.Linear(1, 1)\n")
    out = tmp_path / "run"
    assert_reported(*train_cli(capsys, "--model", f"{tmp_path / 'net.py'}:make", "--out", str(out), *SMALL),
                    "cannot build the model", f"make({signature})", "make(input_shape, n_classes)",
                    "make((100,), 10)", "make()")
    assert not out.exists()


@pytest.mark.parametrize("device, cuda, message", [
    ("bogus", True, "--device 'bogus' is not a device"),
    ("cuda", False, "CUDA is not available"),
])
def test_bad_device_is_reported_before_data_loads(tmp_path, capsys, monkeypatch, no_data_loading, device, cuda,
                                                  message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert_reported(*train_cli(capsys, "--device", device, "--out", str(tmp_path / "run"), *SMALL), message)


NET_OF_WIDTH = """
import math
from torch import nn
import snnopt


def make(input_shape, n_classes):
    return nn.Sequential(nn.Flatten(2), nn.Linear(math.prod(input_shape), {width}), snnopt.nn.LIF(0.9),
                         nn.Linear({width}, n_classes), snnopt.nn.LI(0.9))
"""


def test_resume_with_a_changed_model_is_refused(tmp_path, capsys):
    source, out = tmp_path / "net.py", tmp_path / "run"
    source.write_text(NET_OF_WIDTH.format(width=24))
    args = ["--model", f"{source}:make", "--out", str(out), *SMALL]
    assert train_cli(capsys, *args, "--epochs", "1")[0] == 0
    saved = (out / "checkpoint.pt").read_bytes()
    source.write_text(NET_OF_WIDTH.format(width=30))
    assert_reported(*train_cli(capsys, *args, "--epochs", "2", "--resume"), "does not fit the model",
                    f"{source}:make", "1.weight is [24, 100] there, [30, 100] here")
    assert (out / "checkpoint.pt").read_bytes() == saved


MISFIT_INPUT = """
from torch import nn
from snnopt.nn import LIF


def make():
    return nn.Sequential(nn.Linear(50, 32), LIF(0.9), nn.Linear(32, 10))
"""


def test_input_shape_misfit_is_one_message_without_torch_log_noise(tmp_path, capsys, caplog):
    (tmp_path / "net.py").write_text(MISFIT_INPUT)
    with caplog.at_level(logging.DEBUG, logger="torch"):
        assert_reported(*train_cli(capsys, "--model", f"{tmp_path / 'net.py'}:make", "--out", str(tmp_path / "run"),
                                   *SMALL), "cannot compile the model", "`_0`", "fails on its traced input")
    assert not [r for r in caplog.records if r.name.startswith("torch._subclasses") and r.levelno >= logging.ERROR]


def test_negative_seed_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--seed", "-1"])
    assert done.value.code == 2 and "argument --seed: expected an integer >= 0, got '-1'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--seed must be a non-negative integer"):
        train(TrainConfig(seed=-1, out=None))


@pytest.mark.parametrize("where", ["file", "inside_file"])
def test_output_path_that_cannot_be_a_folder_is_reported_before_data_loads(tmp_path, capsys, no_data_loading,
                                                                           where):
    (tmp_path / "taken").write_text("a file")
    out = tmp_path / "taken" if where == "file" else tmp_path / "taken" / "run"
    assert_reported(*train_cli(capsys, "--out", str(out), *SMALL), f"--out {str(out)!r}", "is a file")


def test_corrupt_train_split_leaves_no_output_folder(tmp_path, capsys):
    write_tiny_nmnist(tmp_path / "data")
    (tmp_path / "data" / "NMNIST" / "Train" / "4" / "00002.bin").write_bytes(b"\x01\x02\x03")
    out = tmp_path / "run"
    assert_reported(*train_cli(capsys, "--dataset", "nmnist", "--data-dir", str(tmp_path / "data"), "--steps", "4",
                               "--batch-size", "1", "--epochs", "1", "--no-progress", "--out", str(out)),
                    "00002.bin")
    assert not out.exists()


def test_plots_have_whole_epoch_ticks():
    history = [{"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.2 / e, "train_acc": 0.1 * e, "test_acc": 0.1 * e,
                "spike_rate": {"lif1": 0.05 * e}, "active_fraction": {}} for e in (1, 2, 3)]
    figures = plot_figures(history)
    assert set(figures) == {"loss.png", "accuracy.png", "spike_rate.png"}
    for name, fig in figures.items():
        (ax,) = fig.axes
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), (name, ticks)


def test_resume_with_no_epochs_left_says_so(tmp_path, caplog):
    common = dict(out=str(tmp_path), batch_size=32, steps=20, hidden=16, progress=False, data_options=TINY_DATA)
    train(TrainConfig(epochs=2, **common))
    saved = (tmp_path / "checkpoint.pt").read_bytes()
    with caplog.at_level(logging.WARNING, logger="snnopt.train"):
        history = train(TrainConfig(epochs=1, resume=True, **common))
    assert [h["epoch"] for h in history] == [1, 2]
    assert "already holds 2 trained epochs" in caplog.text and "nothing to train" in caplog.text
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved


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
