"""snnopt inspect: the HTML graph report (one SVG per pass, highlighted rewrites, provenance
tooltips, the compile report), its terminal summary, failures shown as pages, and the
page rendered by headless Chromium."""

from __future__ import annotations

import re
import runpy
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from snnopt.frontend.tracer import trace
from snnopt.inspect import inspect_model, render_page
from snnopt.inspect.cli import main
from snnopt.inspect.layout import layered_layout
from snnopt.inspect.svg import FILLS
from snnopt.passes import PassManager, canonicalize_neurons, pipeline, verify

from .models import LoopConvNet, spikes

ROOT = Path(__file__).resolve().parent.parent
CONV_SHAPE = (3, 2, 2, 12, 12)


def pass_graphs(page: str) -> list[tuple[str, ET.Element]]:
    """``(pass name, parsed SVG)`` for each pass section of a report page, in order."""
    found = re.findall(r'<section class="pass"[^>]*data-pass="([^"]+)".*?(<svg.*?</svg>)', page, re.S)
    return [(name, ET.fromstring(svg)) for name, svg in found]


def nodes_marked(svg: ET.Element, panel: str, mark: str) -> dict[str, ET.Element]:
    return {g.get("data-node"): g for g in svg.iter("g")
            if g.get("data-panel") == panel and mark in g.get("class", "").split()}


def assert_self_contained(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "@import" not in page
    links = re.findall(r'\b(?:src|href)\s*=\s*["\']?([^"\'\s>]*)', page)
    assert all(link.startswith("#") for link in links), "only in-page links are allowed"


@pytest.fixture(scope="module")
def loop_conv_page(tmp_path_factory) -> tuple[Path, str]:
    """The report of the per-step-loop conv net in sparse mode, written by the CLI from its file."""
    out = tmp_path_factory.mktemp("inspect") / "loop_conv.html"
    rc = main([f"{ROOT / 'tests' / 'models.py'}:LoopConvNet", "--input-shape", "2,12,12", "--steps",
               str(CONV_SHAPE[0]), "--mode", "sparse", "--out", str(out)])
    assert rc == 0
    return out, out.read_text(encoding="utf-8")


def test_mlp_preset_report_and_summary(tmp_path, capsys, monkeypatch):
    out = tmp_path / "mlp.html"
    monkeypatch.setattr(sys, "argv", ["inspect_graph.py", "--preset", "mlp", "--input-shape", "12", "--steps", "3",
                                      "--out", str(out)])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / "tools" / "inspect_graph.py"), run_name="__main__")
    assert done.value.code == 0
    names = [p.__name__ for p in pipeline("dense")]
    printed = capsys.readouterr().out
    assert "nodes before" in printed and "nodes after" in printed and "created" in printed
    for name in names:
        assert re.search(rf"^{re.escape(name)}\s+\d+\s+\d+\s+\d+\s+\d+", printed, re.M), name
    page = out.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert page.count("<svg") == len(names)
    assert [name for name, _ in pass_graphs(page)] == names
    canonical = dict(pass_graphs(page))["canonicalize_neurons"]
    created = nodes_marked(canonical, "after", "created")
    assert any(n.startswith("neuron_scan") for n in created)
    assert all("from_node: " in g.find("title").text and "origin: canonicalize_neurons" in g.find("title").text
               for g in created.values())
    assert set(nodes_marked(canonical, "before", "erased")) == {"lif1", "lif2", "readout"}
    for section in ("Compile report", "Neurons (3)", "Expected saved-for-backward memory", "Kernel backends",
                    "lif beta=0.9 theta=1"):
        assert section in page


@pytest.mark.parametrize("engine", ["matplotlib", "graphviz"])
def test_loop_conv_reroll_highlights_created_nodes(engine, loop_conv_page):
    if engine == "graphviz" and not shutil.which("dot"):
        pytest.skip("graphviz `dot` is not installed; the matplotlib drawing is tested instead")
    x = spikes(CONV_SHAPE, seed=0)
    gm, _ = trace(LoopConvNet(), (x,))
    pm = PassManager(pipeline("sparse"), verifier=verify, snapshots=True)
    pm(gm, (x,))
    reroll = next(h for h in pm.history if h["pass"] == "reroll_time")
    before = {n.name for n in reroll["graph_before"].nodes}
    after = {n.name for n in reroll["graph_after"].nodes}
    assert after - before and before - after

    page = loop_conv_page[1] if engine == "matplotlib" else \
        render_page(inspect_model(LoopConvNet(), (x,), mode="sparse"), engine=engine)
    assert_self_contained(page)
    graphs = pass_graphs(page)
    assert [name for name, _ in graphs] == [h["pass"] for h in pm.history]
    assert page.count("<svg") == len(pm.history)
    svg = dict(graphs)["reroll_time"]
    created = nodes_marked(svg, "after", "created")
    assert set(created) == after - before
    assert set(nodes_marked(svg, "before", "erased")) == before - after
    for name, g in created.items():
        title = g.find("title").text
        assert title.startswith(name) and "origin: reroll_time" in title and "from_node: " in title
        assert FILLS["created"] in ET.tostring(g, encoding="unicode")
    scan = next(g for n, g in created.items() if n.startswith("neuron_scan"))
    assert "spec: lif beta=0.8" in scan.find("title").text and "backend: " in scan.find("title").text
    assert f"{CONV_SHAPE[0]} per-step calls -&gt; one multi-step scan" in page


BAD_MODELS = """
import torch
from torch import nn
import snnopt.nn as snn


class Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.lif = nn.Linear(4, 3), snn.LIF(0.9)

    def forward(self, x):
        y = self.fc(x)
        if y.sum() > 0:  # data-dependent control flow
            y = y * 2
        return self.lif(y)


class ToPython(Branches):
    def forward(self, x):
        y = self.fc(x)
        return self.lif(y * float(y.sum()))


class Fails(Branches):
    def forward(self, x):
        y = self.fc(x)
        raise RuntimeError("unsupported <layer> & friends")
"""


@pytest.mark.parametrize("model, message, last_node", [
    ("Branches", "symbolically traced variables cannot be used as inputs to control flow", "gt"),
    ("ToPython", "float()", "sum_1"),
    ("Fails", "unsupported &lt;layer&gt; &amp; friends", "fc"),
])
def test_trace_failure_is_a_report_page(model, message, last_node, tmp_path, capsys):
    source = tmp_path / "bad_models.py"
    source.write_text(textwrap.dedent(BAD_MODELS))
    out = tmp_path / "bad.html"
    rc = main([f"{source}:{model}", "--input-shape", "4", "--steps", "3", "--out", str(out)])
    printed = capsys.readouterr()
    assert rc == 1
    assert "Traceback" not in printed.out + printed.err
    assert "tracing failed" in printed.out and f"`{last_node}`" in printed.out
    page = out.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "Tracing failed" in page and message in page
    assert f"Tracing stopped after node <code>{last_node}</code>" in page
    partial = ET.fromstring(re.search(r"<svg.*?</svg>", page, re.S).group(0))
    assert set(nodes_marked(partial, "partial", "stopped")) == {last_node}
    assert "<layer>" not in page


def test_failing_pass_is_a_report_page(monkeypatch):
    def broken(gm):
        raise RuntimeError("cannot lower <this>")

    monkeypatch.setattr("snnopt.inspect.record.pipeline", lambda mode, band, device: [canonicalize_neurons, broken])
    inspection = inspect_model(LoopConvNet(), (spikes(CONV_SHAPE),))
    assert not inspection.ok and inspection.failure.stage == "broken"
    assert [p.name for p in inspection.passes] == ["canonicalize_neurons"]
    page = render_page(inspection, engine="matplotlib")
    assert "Pass <code>broken</code> failed" in page and "cannot lower &lt;this&gt;" in page
    assert page.count("<svg") == 2  # the graph entering the failed pass and the one pass that ran


def test_layered_layout_puts_users_below_inputs():
    nodes = ["x", "w", "a", "b", "out"]
    edges = [("x", "a"), ("w", "b"), ("a", "b"), ("b", "out")]
    pos = layered_layout(nodes, edges)
    assert all(pos[src][1] < pos[dst][1] for src, dst in edges)
    assert pos["w"][1] == pos["b"][1] - 1  # a parameter sits right above its user
    rows = {}
    for x, layer in pos.values():
        rows.setdefault(layer, []).append(x)
    assert all(abs(p - q) >= 1 for xs in rows.values() for i, p in enumerate(xs) for q in xs[i + 1:])


def chromium() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
                 if shutil.which(b)), None)


def test_page_renders_in_headless_chromium(loop_conv_page, tmp_path):
    binary = chromium()
    if binary is None:
        pytest.skip("no headless Chromium found (chromium, chromium-browser or google-chrome on PATH); "
                    "install chromium to run the render test")
    import matplotlib.image

    page, _ = loop_conv_page
    shot = tmp_path / "shot.png"
    subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
                    page.as_uri()], capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "Chromium wrote no screenshot"
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2000, 1280)
    rgb = (pixels[..., :3] * 255).round().astype("uint8").reshape(-1, 3)
    colours = {tuple(c) for c in rgb[::7]}
    assert len(colours) > 50, "the screenshot is (nearly) blank"
    assert (rgb.min(axis=1) < 200).mean() > 0.02, "almost nothing dark was drawn"
    for fill in ("created", "erased"):
        target = tuple(int(FILLS[fill][i:i + 2], 16) for i in (1, 3, 5))
        assert target in colours, f"no {fill} node visible"


def inspect_cli(capsys, *args) -> tuple[int, str, str]:
    """``snnopt inspect ARGS``: the exit status, stdout and stderr."""
    status = main(list(args))
    printed = capsys.readouterr()
    return status, printed.out, printed.err


def test_graphviz_layout_without_dot_is_reported_before_compiling(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("snnopt.inspect.svg.shutil.which", lambda name: None)
    monkeypatch.setattr("snnopt.inspect.cli.inspect_model", lambda *a, **k: pytest.fail("compiled anyway"))
    out = tmp_path / "mlp.html"
    status, printed, err = inspect_cli(capsys, "--preset", "mlp", "--layout", "graphviz", "--out", str(out))
    assert status == 2 and not printed and "Traceback" not in err
    assert err.startswith("snnopt inspect: --layout graphviz: ") and "`dot`" in err and "--layout matplotlib" in err
    assert not out.exists()


def test_preset_shape_misfit_names_inspect_options(tmp_path, capsys):
    status, printed, err = inspect_cli(capsys, "--preset", "conv", "--input-shape", "100", "--out",
                                       str(tmp_path / "conv.html"))
    assert status == 2 and not printed
    assert "(100,)" in err and "--input-shape C,H,W" in err and "--preset mlp" in err and "--model" not in err


@pytest.mark.parametrize("signature", ["a, b, c", "input_shape"])
def test_factory_signature_mismatch_states_the_calling_convention(tmp_path, capsys, signature):
    source = tmp_path / "net.py"
    source.write_text(f"from torch import nn\n\ndef make({signature}):\n    return nn.Linear(1, 1)\n")
    status, printed, err = inspect_cli(capsys, f"{source}:make", "--input-shape", "7", "--classes", "3", "--out",
                                       str(tmp_path / "net.html"))
    assert status == 2 and not printed and "Traceback" not in err
    for fragment in ("cannot build the model", f"make({signature})", "make(input_shape, n_classes)", "make((7,), 3)",
                     "make()"):
        assert fragment in err, fragment


def test_input_errors_go_to_stderr(tmp_path, capsys):
    status, printed, err = inspect_cli(capsys, f"{ROOT / 'tests' / 'models.py'}:LoopConvNet", "--out",
                                       str(tmp_path / "x.html"))
    assert status == 2 and not printed and "--input-shape is needed" in err
    with pytest.raises(SystemExit) as done:
        main(["--preset", "mlp", "--seed", "-1"])
    assert done.value.code == 2 and "argument --seed: expected an integer >= 0" in capsys.readouterr().err
