"""Smoke tests of ``snnopt bench`` on tiny sizes (``quick``) and of the saved-memory meter;
speed goals are benchmarks, not tests."""

import gc
import sys
import weakref

import pytest
import torch

from snnopt import bench
from snnopt.cli import main
from snnopt.profiling import SavedTensorMeter

COLUMNS = ("impl", "backend", "step ms", "backward ms", "saved MiB", "step x vs snnTorch", "step x vs snnopt dense",
           "backward x vs snnopt dense")


@pytest.fixture(scope="module")
def result():
    return bench.run_bench("shd", device="cpu", quick=True, repeats=2, warmup=1)


def _cells(line):
    return [c.strip() for c in line.split("|")]


def test_rows_for_every_implementation(result):
    assert [r["impl"] for r in result["rows"]] == list(bench.IMPLS)
    for r in result["rows"]:
        assert r["note"] == "", r
        for key in ("step_s", "backward_s"):
            assert r[key] is not None and r[key] > 0, (r["impl"], key)
        assert r["saved_bytes"] > 0, r["impl"]
        assert r["cuda_peak_bytes"] is None
    backends = {r["impl"]: r["backend"] for r in result["rows"]}
    for mode in ("dense", "sparse", "rate"):
        assert backends[f"snnopt {mode}"].startswith(mode)


def test_result_describes_the_run(result):
    wl = result["workload"]
    assert (wl.name, wl.steps, wl.batch) == ("shd", 10, 4)
    assert result["device"] == "cpu" and result["device_name"]
    assert result["threads"] == torch.get_num_threads()
    assert result["repeats"] == 2
    assert result["date"][:2] == "20"


def test_table_columns_and_ratios(result):
    lines = bench.format_table(result).splitlines()
    assert _cells(lines[0]) == list(COLUMNS)
    body = [_cells(line) for line in lines[2:]]
    assert [c[0] for c in body] == list(bench.IMPLS)
    by_impl = {c[0]: c for c in body}
    assert by_impl["snntorch"][COLUMNS.index("step x vs snnTorch")] == "1.00"
    dense = by_impl["snnopt dense"]
    assert dense[-2:] == ["1.00", "1.00"]
    saved = COLUMNS.index("saved MiB")
    for cells in body:
        assert all(float(c) > 0 for i, c in enumerate(cells[2:], 2) if i != saved), cells  # tiny sizes: 0.00 MiB


def test_missing_library_is_skipped_with_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "snntorch", None)  # import snntorch now raises ImportError
    result = bench.run_bench("linear", device="cpu", quick=True, repeats=1, warmup=0,
                             impls=("snntorch", "snnopt dense"))
    skipped, dense = result["rows"]
    assert skipped["step_s"] is None and "not installed" in skipped["note"]
    assert dense["step_s"] > 0
    lines = bench.format_table(result).splitlines()
    assert "not installed" in lines[2]
    assert _cells(lines[3])[COLUMNS.index("step x vs snnTorch")] == "-"


def test_append_results_to_a_given_file(result, tmp_path):
    path = tmp_path / "results" / "RESULTS.md"
    assert bench.append_results(result, path) == path
    bench.append_results(result, path)
    text = path.read_text()
    assert text.startswith(bench.RESULTS_HEADER)
    assert text.count(f"## {result['date']} · shd · {result['device_name']}") == 2
    assert "T=10, B=4" in text and f"{result['threads']} threads" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert _cells(table[0])[1:-1] == list(COLUMNS)
    assert [_cells(line)[1] for line in table[2:7]] == list(bench.IMPLS)


def test_cli_bench_prints_table_and_appends(tmp_path, capsys):
    path = tmp_path / "RESULTS.md"
    assert main(["bench", "--quick", "--workload", "linear", "--repeats", "1", "--warmup", "0", "--threads", "1",
                 "--no-progress", "--results", str(path)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("impl "))
    assert _cells(header) == list(COLUMNS)
    assert "1 threads" in out and "Linear+LIF 32-32, T=10, B=4" in out
    text = path.read_text()
    assert "· linear ·" in text and bench.device_name("cpu") in text


def test_cli_no_append_writes_nothing(tmp_path, capsys):
    path = tmp_path / "RESULTS.md"
    assert main(["bench", "--quick", "--repeats", "1", "--warmup", "0", "--no-progress", "--no-append",
                 "--results", str(path)]) == 0
    assert "snnopt sparse" in capsys.readouterr().out
    assert not path.exists()


def test_workload_sizes():
    assert bench.workload("shd", "cpu").sizes == (700, 256, 256, 20)
    assert (bench.workload("shd", "cpu").steps, bench.workload("shd", "cpu").batch) == (100, 64)
    assert (bench.workload("shd", "cuda").steps, bench.workload("shd", "cuda").batch) == (500, 256)
    linear = bench.workload("linear", "cpu")
    assert (linear.sizes, linear.steps, linear.batch) == ((4096, 4096), 500, 16)
    assert bench.workload("shd", "cpu", neurons=64).sizes == (700, 64, 64, 20)
    assert bench.workload("linear", "cpu", neurons=128, steps=7).sizes == (128, 128)
    conv = bench.workload("conv", "cpu")
    assert (conv.conv, conv.image, conv.kernel, conv.sizes) == ((2, 12, 32), 34, 5, (800, 10))
    assert (conv.steps, conv.batch, conv.input_shape) == (32, 16, (2, 34, 34))
    assert bench.workload("conv", "cuda").batch == 128
    assert "2x34x34-12c5-ap2-32c5-ap2-10, T=32, B=16" in conv.describe()
    assert bench.workload("conv", "cpu", steps=10).steps == 10
    with pytest.raises(ValueError, match="neurons"):
        bench.workload("conv", neurons=64)
    with pytest.raises(ValueError, match="workload"):
        bench.workload("nope")


# ---------------------------------------------------------------- conv workload

@pytest.fixture(scope="module")
def conv_result():
    return bench.run_bench("conv", device="cpu", quick=True, repeats=1, warmup=0)


def test_conv_rows_for_every_implementation(conv_result):
    wl = conv_result["workload"]
    assert (wl.name, wl.conv, wl.steps, wl.batch) == ("conv", (2, 4, 8), 5, 2)
    assert [r["impl"] for r in conv_result["rows"]] == list(bench.IMPLS)
    for r in conv_result["rows"]:
        assert r["note"] == "" and r["step_s"] > 0 and r["backward_s"] > 0 and r["saved_bytes"] > 0, r
    lines = bench.format_table(conv_result).splitlines()
    assert [_cells(line)[0] for line in lines[2:]] == list(bench.IMPLS)
    assert "N-MNIST-sized conv net 2x34x34-4c5-ap2-8c5-ap2-5, T=5, B=2" in bench.describe_run(conv_result)


@pytest.mark.parametrize("name", ["shd", "conv"])
def test_forward_outputs_agree_before_training(name):
    """Every implementation whose neuron semantics match the plain snnopt model computes
    its output (the logits) from the same weights; snnTorch resets one step later
    (its ``reset_delay``), so only its shape is compared."""
    wl = bench.workload(name, "cpu", quick=True)
    device = torch.device("cpu")
    x, _ = bench.make_batch(wl, 0, device)
    layers = bench.initial_layers(wl, 0)
    reference = bench._network("snnopt", wl)
    bench._copy_layers(layers, reference)
    with torch.no_grad():
        expected = reference(x)
    assert expected.shape == (wl.batch, wl.sizes[-1]) and expected.abs().sum() > 0
    for impl_name in bench.IMPLS:
        impl = bench._build(impl_name, wl, layers, x, device)
        assert impl.note == "", impl.note
        out = impl.forward(x)
        assert out.shape == expected.shape, impl_name
        if impl_name != "snntorch":
            torch.testing.assert_close(out.detach(), expected, rtol=1e-5, atol=1e-5, msg=impl_name)


def test_conv_regions_are_fused_in_sparse_mode():
    """The snnopt conv model is written in the pattern snnopt fuses (Conv2d + LIF region)."""
    wl = bench.workload("conv", "cpu", quick=True)
    x, _ = bench.make_batch(wl, 0, torch.device("cpu"))
    impl = bench._build("snnopt sparse", wl, bench.initial_layers(wl, 0), x, torch.device("cpu"))
    report = impl.forward.report
    assert sum("Conv2d region" in n.detail for n in report.rewritten) == 2, str(report)
    assert not report.eager and not report.warnings, str(report)


# ---------------------------------------------------------------- T sweep (rate mode's target)

SWEEP_COLUMNS = ("T", "dense step ms", "rate step ms", "rate step x vs dense", "rate backward x vs dense",
                 "dense saved MiB", "rate saved MiB")


def test_sweep_runs_dense_and_rate_at_each_t(tmp_path):
    sweep = bench.run_sweep("shd", steps=(2, 8), device="cpu", quick=True, repeats=1, warmup=0)
    assert sweep["steps"] == (2, 8) and len(sweep["runs"]) == 2
    assert [run["workload"].steps for run in sweep["runs"]] == [2, 8]
    saved = {}
    for run in sweep["runs"]:
        rows = {r["impl"]: r for r in run["rows"]}
        assert tuple(rows) == bench.SWEEP_IMPLS
        assert all(r["step_s"] > 0 and r["saved_bytes"] > 0 for r in rows.values())
        saved[run["workload"].steps] = {impl: r["saved_bytes"] for impl, r in rows.items()}
    assert saved[8]["snnopt dense"] > 3 * saved[2]["snnopt dense"], saved  # dense BPTT keeps every step
    assert saved[8]["snnopt rate"] == saved[2]["snnopt rate"], saved  # rate mode: flat in T
    lines = bench.format_sweep(sweep).splitlines()
    assert _cells(lines[0]) == list(SWEEP_COLUMNS)
    body = [_cells(line) for line in lines[2:]]
    assert [c[0] for c in body] == ["2", "8"]
    for cells in body:
        dense_ms, rate_ms, speedup = (float(c) for c in cells[1:4])
        assert speedup == pytest.approx(dense_ms / rate_ms, rel=0.02, abs=0.01)
    assert "SHD-like MLP 40-16-16-5, T=2/8, B=4" in bench.describe_sweep(sweep)
    path = bench.append_sweep(sweep, tmp_path / "RESULTS.md")
    text = path.read_text()
    assert text.startswith(bench.RESULTS_HEADER) and f"· shd T sweep · {sweep['device_name']}" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert _cells(table[0])[1:-1] == list(SWEEP_COLUMNS) and len(table) == 4


def test_cli_sweep_prints_table_and_appends(tmp_path, capsys):
    path = tmp_path / "RESULTS.md"
    assert main(["bench", "--quick", "--workload", "linear", "--sweep-steps", "2,4", "--repeats", "1", "--warmup",
                 "0", "--no-progress", "--results", str(path)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.strip().startswith("T "))
    assert _cells(header) == list(SWEEP_COLUMNS)
    assert "Linear+LIF 32-32, T=2/4, B=4" in out and "snntorch |" not in out
    assert "· linear T sweep ·" in path.read_text()


@pytest.mark.parametrize("argv", [["--sweep-steps", "2,0"], ["--sweep-steps", "2,4", "--steps", "3"],
                                  ["--workload", "conv", "--neurons", "8"], ["--workload", "all", "--neurons", "8"]])
def test_cli_bench_rejects_bad_options(argv, tmp_path):
    with pytest.raises(SystemExit):
        main(["bench", "--quick", "--no-progress", "--results", str(tmp_path / "R.md"), *argv])
    assert not (tmp_path / "R.md").exists()


# ---------------------------------------------------------------- SavedTensorMeter

def test_meter_counts_exactly_the_saved_operands():
    x, y = torch.randn(1000, requires_grad=True), torch.randn(1000, requires_grad=True)
    with SavedTensorMeter() as meter:
        z = x * y  # mul saves both operands
    assert (meter.bytes, meter.count, meter.kept_bytes) == (8000, 2, 8000)
    with SavedTensorMeter(exclude=[x]) as meter:
        z = x * y
    assert (meter.bytes, meter.count) == (4000, 1)
    del z


def test_meter_counts_a_storage_once():
    x = torch.randn(1000, requires_grad=True)
    with SavedTensorMeter() as meter:
        z = (x * x).sum() + (x * 3.0).exp().sum()  # x saved twice by mul; exp saves its output
    assert (meter.bytes, meter.count) == (8000, 2)
    with SavedTensorMeter() as meter:
        z = x[:100] * x[500:600]  # two views of one storage: the whole storage is held, once
    assert (meter.bytes, meter.count) == (4000, 1)
    del z


def test_meter_does_not_count_parameters():
    fc = torch.nn.Linear(1000, 10)  # F.linear saves weight.t(), a view of the parameter
    x = torch.randn(2, 1000, requires_grad=True)
    with SavedTensorMeter() as meter:
        out = fc(x)
    assert meter.bytes == 8000
    del out


def test_meter_does_not_count_what_the_forward_frees():
    """Saved tensors of a graph dropped during the block are released, and an address the
    allocator then reuses is a new storage: only what autograd holds counts."""
    x, y = torch.randn(1000, requires_grad=True), torch.randn(1000, requires_grad=True)
    with SavedTensorMeter() as meter:
        for _ in range(5):
            scratch = (x[:100] + 1.0) * (y[:100] + 1.0)  # saves two fresh 400-byte tensors
            del scratch
        z = x * y
    assert (meter.bytes, meter.kept_bytes) == (8000, 8000)
    with SavedTensorMeter() as meter:
        (x * y).sum().backward()  # backward releases what the forward saved
    assert (meter.bytes, meter.kept_bytes) == (8000, 0)
    del z


def test_meter_keeps_nothing_alive():
    x = torch.randn(1000, requires_grad=True)
    with SavedTensorMeter() as meter:
        z = x.exp()  # saves its own output: no reference cycle through the graph
        loss = z.sin().sum()
    ref = weakref.ref(z)
    del z, loss
    gc.collect()
    assert ref() is None and meter.kept_bytes == 4000


def test_scan_bench_times_every_layer_and_reports_the_roofline(capsys):
    """``python -m bench.scan`` on tiny sizes: a row with both times for each
    implementation, the dense row's share of the copy rate, and the compiled layers' modes."""
    from bench import scan

    result = scan.run(steps=6, batch=3, neurons=40, device=torch.device("cpu"), repeats=2, warmup=1)
    assert [r["impl"] for r in result["rows"]] == list(scan.IMPLS)
    assert result["bytes"] == 3 * 6 * 3 * 40 * 4 and result["copy_rate"] > 0
    for r in result["rows"]:
        assert r["forward_s"] > 0 and r["backward_s"] > 0, r
    modes = {r["impl"]: r["backend"] for r in result["rows"]}
    assert modes["snnopt dense"] == "dense" and modes["snnopt sparse"] == "sparse"
    assert scan.main(["--device", "cpu", "--steps", "4", "--batch-size", "2", "--neurons", "8", "--repeats", "1",
                      "--warmup", "0", "--impl", "snnopt dense"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("LIF scan, T = 4, B = 2, N = 8")
    dense = _cells(table[-1])
    assert dense[1] == "snnopt dense" and dense[6] == "1.00x" and dense[7].endswith("%")
