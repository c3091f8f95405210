"""`snnopt export`: a user's model file or a NIR file to NIR / ONNX / event graph, with clear errors."""

from __future__ import annotations

import textwrap

import pytest
import torch

import snnopt
from snnopt.cli import main

from .models import spikes

pytest.importorskip("nir")

MODEL_FILE = textwrap.dedent("""
    import torch
    from torch import nn
    import snnopt


    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(10, 12), snnopt.nn.LIF(0.875, reset="zero"), nn.Linear(12, 4),
                             snnopt.nn.LI(0.75))
""")


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(MODEL_FILE)
    return path


def test_export_user_model_to_nir_and_convert_nir_to_other_formats(model_file, tmp_path, capsys):
    out = tmp_path / "net.nir"
    weights = tmp_path / "w.pt"
    from snnopt.loader import load_factory

    trained = load_factory(f"{model_file}:make")()
    with torch.no_grad():
        trained[0].weight.mul_(4)
    torch.save(trained.state_dict(), weights)
    assert main(["export", f"{model_file}:make", "--input-shape", "10", "--dt", "1e-3", "--weights", str(weights),
                 "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    x = spikes((50, 2, 10), p=0.4)
    assert torch.equal(snnopt.from_nir(out)(x), trained(x))
    again = tmp_path / "again.nir"
    assert main(["export", str(out), "--out", str(again)]) == 0  # dt comes from the file
    assert torch.equal(snnopt.from_nir(again)(x), trained(x))


def test_export_errors_are_reported_not_raised(model_file, tmp_path, capsys):
    assert main(["export", f"{model_file}:missing", "--input-shape", "10", "--out", str(tmp_path / "a.nir"),
                 "--dt", "1e-3"]) == 1
    assert "defines no function 'missing'" in capsys.readouterr().out
    assert main(["export", str(model_file), "--input-shape", "10", "--out", str(tmp_path / "a.nir"),
                 "--dt", "1e-3"]) == 1  # the file without its function: the functions it defines are named
    assert f"give FILE.py:FUNCTION, e.g. {model_file}:make (it defines: make)" in capsys.readouterr().out
    assert main(["export", f"{tmp_path}/nothere.py:make", "--input-shape", "10", "--out", str(tmp_path / "a.nir"),
                 "--dt", "1e-3"]) == 1
    assert "does not exist" in capsys.readouterr().out
    assert main(["export", f"{model_file}:make", "--input-shape", "10", "--out", str(tmp_path / "a.nir")]) == 1
    assert "dt=" in capsys.readouterr().out
    (tmp_path / "bad.nir").write_bytes(b"junk")
    assert main(["export", str(tmp_path / "bad.nir"), "--out", str(tmp_path / "b.nir")]) == 1
    assert "cannot read NIR file" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["export", f"{model_file}:make", "--out", str(tmp_path / "a.nir")])  # no --input-shape


def test_convert_nir_to_onnx_and_event_graph_and_check_hardware(model_file, tmp_path, capsys):
    from snnopt.export import events
    from snnopt.export import onnx as onnx_export

    nir_path = tmp_path / "net.nir"
    assert main(["export", f"{model_file}:make", "--input-shape", "10", "--dt", "1e-3", "--out", str(nir_path)]) == 0
    x = spikes((40, 2, 10), p=0.4)
    reference = snnopt.from_nir(nir_path)(x)
    onnx_path, graph_path = tmp_path / "net.onnx", tmp_path / "net.json"
    assert main(["export", str(nir_path), "--out", str(onnx_path)]) == 0
    assert main(["export", str(nir_path), "--out", str(graph_path)]) == 0
    torch.testing.assert_close(onnx_export.run(onnx_path, x)[0], reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(events.EventSimulator(events.read(graph_path)).run(x)[0], reference,
                               rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    status = main(["export", str(nir_path), "--out", str(tmp_path / "again.nir"), "--check", "speck"])
    printed = capsys.readouterr().out
    assert status == 2 and "| leak" in printed and "| neuron_kind" in printed  # Speck: no leak, no LI readout


SHAPED_FILE = textwrap.dedent("""
    import torch
    from torch import nn
    import snnopt


    def make(input_shape, n_classes):
        return nn.Sequential(nn.Linear(input_shape[0], 12), snnopt.nn.LIF(0.875, reset="zero"),
                             nn.Linear(12, n_classes), snnopt.nn.LI(0.75))
""")


def test_factory_of_shape_and_classes_with_a_training_checkpoint(tmp_path, capsys):
    from snnopt.loader import load_factory

    source = tmp_path / "shaped.py"
    source.write_text(SHAPED_FILE)
    torch.manual_seed(3)
    trained = load_factory(f"{source}:make")((10,), 4)
    with torch.no_grad():
        trained[0].weight.mul_(4)
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 2, "model": trained.state_dict(), "history": [{"loss": 1.0}]}, checkpoint)
    out = tmp_path / "net.nir"
    args = ["export", f"{source}:make", "--input-shape", "10", "--dt", "1e-3", "--weights", str(checkpoint),
            "--out", str(out)]
    assert main(args) == 1
    assert "takes (input_shape, n_classes)" in capsys.readouterr().out and not out.exists()
    assert main(args + ["--n-classes", "4"]) == 0
    x = spikes((50, 2, 10), p=0.4)
    expected = trained(x)
    assert expected.abs().sum() > 0 and torch.equal(snnopt.from_nir(out)(x), expected)


def test_bad_arguments_are_reported_before_anything_is_written(model_file, tmp_path, capsys):
    out = tmp_path / "a.nir"
    common = ["--dt", "1e-3", "--out", str(out)]
    assert main(["export", f"{model_file}:make", "--input-shape", "12", *common]) == 1
    assert "first layer '0' (Linear) takes 10 features" in capsys.readouterr().out
    assert main(["export", f"{model_file}:make", "--input-shape", "10", "--check", "tpu", *common]) == 1
    assert "unknown hardware target 'tpu'" in capsys.readouterr().out
    assert main(["export", "mlp", "--input-shape", "10", *common]) == 1
    assert "training preset" in capsys.readouterr().out
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert main(["export", f"{model_file}:make", "--input-shape", "10", "--weights", str(tmp_path / "junk.pt"),
                 *common]) == 1
    assert "--weights" in capsys.readouterr().out
    assert not out.exists()


def test_unknown_out_suffix_names_the_option_and_the_suffixes(model_file, tmp_path, capsys):
    args = ["export", f"{model_file}:make", "--input-shape", "10", "--dt", "1e-3", "--out"]
    assert main(args + [str(tmp_path / "out.xyz")]) == 1
    printed = capsys.readouterr().out
    assert "--out" in printed and "'.xyz' names no output format" in printed
    assert ".nir, .onnx, .graphml or .json" in printed and "format=" not in printed
    assert main(args + [str(tmp_path / "out")]) == 1
    assert "has no suffix" in capsys.readouterr().out
    assert not list(tmp_path.glob("out*"))
    with pytest.raises(ValueError, match="format='nir'"):  # the Python API names its keyword
        snnopt.export(torch.nn.Linear(10, 4), tmp_path / "out.xyz")
