"""Smoke tests of ``snnopt bench`` on tiny sizes (``quick``); speed goals are benchmarks, not tests."""

import sys

import pytest
import torch

from snnopt import bench
from snnopt.cli import main

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
    with pytest.raises(ValueError, match="workload"):
        bench.workload("conv")
