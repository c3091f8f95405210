import math

import pytest

from snnopt import __version__
from snnopt.cli import main
from snnopt.demo import MODES, format_table, run_demo

TINY = {"epochs": 1, "batch_size": 32, "n_steps": 20, "hidden": 32,
        "dataset_kwargs": {"n_train_per_class": 8, "n_test_per_class": 4}}


@pytest.fixture(scope="module")
def rows():
    return run_demo(progress=False, **TINY)


def test_rows_cover_every_mode(rows):
    assert [r["mode"] for r in rows] == list(MODES)
    assert [r["compiled_mode"] for r in rows] == list(MODES)


def test_measurements_are_sane(rows):
    for r in rows:
        assert 0.0 <= r["test_acc"] <= 1.0
        assert math.isfinite(r["final_loss"])
        for key in ("epoch_s", "backward_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["mode"], key)
        assert r["backward_s"] < r["epoch_s"]
        assert r["saved_bytes"] > 0


def test_sparse_and_rate_save_less_than_dense(rows):
    saved = {r["mode"]: r["saved_bytes"] for r in rows}
    assert saved["sparse"] < saved["dense"]
    assert saved["rate"] < saved["dense"]


def test_active_fraction_only_for_sparse(rows):
    by_mode = {r["mode"]: r for r in rows}
    assert by_mode["dense"]["active_fraction"] is None
    assert by_mode["rate"]["active_fraction"] is None
    assert 0.0 <= by_mode["sparse"]["active_fraction"] <= 1.0


def test_runs_are_reproducible():
    # Same seed: same data, initial weights and batch order, hence the same training.
    first, second = (run_demo(modes=("dense",), progress=False, **TINY)[0] for _ in range(2))
    assert first["final_loss"] == second["final_loss"]
    assert first["test_acc"] == second["test_acc"]


def test_format_table_ratios(rows):
    table = format_table(rows)
    lines = table.splitlines()
    assert lines[0].split(" | ")[0].strip() == "mode"
    assert [line.split("|")[0].strip() for line in lines[2:]] == list(MODES)
    dense = lines[2].split("|")
    assert [c.strip() for c in dense[-3:]] == ["1.00", "1.00", "1.00"]
    memory = {line.split("|")[0].strip(): float(line.split("|")[-1]) for line in lines[2:]}
    assert memory["sparse"] < 1 and memory["rate"] < 1


def test_format_table_without_dense_row(rows):
    table = format_table([r for r in rows if r["mode"] != "dense"])
    for line in table.splitlines()[2:]:
        assert [c.strip() for c in line.split("|")[-3:]] == ["-", "-", "-"]


def test_run_demo_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        run_demo(modes=("dense", "bogus"), progress=False, **TINY)


def test_cli_demo_prints_reports_and_table(capsys):
    assert main(["demo", "--epochs", "1", "--batch-size", "128", "--no-progress"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("mode "))
    for column in ("test acc", "s/epoch", "backward ms/step", "saved MiB/step", "active %", "epoch x", "backward x",
                   "memory x"):
        assert column in header
    for mode in MODES:
        assert f"snnopt compile report: SpikingMLP  mode={mode}" in out
        assert any(line.split("|")[0].strip() == mode for line in out.splitlines() if "|" in line)


def test_cli_modes_option(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--modes", "dense,bogus"])
    assert "modes must be" in capsys.readouterr().err


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out
