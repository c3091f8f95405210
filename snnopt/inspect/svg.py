"""Draw recorded graphs as one inline SVG: graphviz ``dot`` when it is installed, else a
layered networkx layout drawn with matplotlib.

Several graphs (a pass's before and after) go side by side into one SVG.  Every node is
an SVG group ``<g class="node MARK" data-node=NAME data-panel=KEY>`` holding a
``<title>`` (the hover tooltip: target, shape, provenance, spec, mode and backend); its
fill shows the mark (created, erased, changed, stopped) from :data:`FILLS`.  The result
has no XML prolog, namespaces or metadata and its ids carry a prefix, so several SVGs
can sit in one HTML page.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from .layout import layered_layout
from .record import GraphSnapshot, NodeInfo

log = logging.getLogger(__name__)

FILLS = {"created": "#8fd19e", "erased": "#f19c9c", "changed": "#f6d365", "stopped": "#ff9f43"}
"""Fill of a marked node, by mark."""
MARK_LABELS = {"created": "created by this pass", "erased": "erased by this pass",
               "changed": "inputs or target changed", "stopped": "tracing stopped here"}
NEURON_FILL, PLAIN_FILL, EDGE_COLOUR, TEXT_COLOUR = "#cfdcf5", "#eef0f3", "#8a94a6", "#1f2430"
ENGINES = ("auto", "graphviz", "matplotlib")

_COLUMN, _LAYER = 1.6, 0.62  # inches per node column and per layer (matplotlib drawing)
_BOX_W, _BOX_H, _FONT, _TITLE = 1.44, 0.46, 6.5, 0.32
_LINE_CHARS = 28


@dataclass(frozen=True)
class Panel:
    """One graph to draw: ``key`` names it in the SVG (``data-panel``), ``marks`` maps node
    names to a key of :data:`FILLS`."""

    key: str
    title: str
    graph: GraphSnapshot
    marks: dict = field(default_factory=dict)


def resolve_engine(engine: str = "auto") -> str:
    """``"graphviz"`` or ``"matplotlib"``: ``auto`` picks graphviz when ``dot`` is on PATH."""
    if engine not in ENGINES:
        raise ValueError(f"layout engine must be one of {ENGINES}, got {engine!r}")
    if engine == "auto":
        return "graphviz" if shutil.which("dot") else "matplotlib"
    if engine == "graphviz" and not shutil.which("dot"):
        raise ValueError("the graphviz layout needs graphviz's `dot` program, which is not on PATH; install graphviz "
                         "or use the matplotlib layout")
    return engine


def graph_svg(panels: list[Panel], prefix: str, engine: str = "auto") -> str:
    """One SVG (text) showing ``panels`` side by side; ids are prefixed with ``prefix``."""
    engine = resolve_engine(engine)
    raw = None
    if engine == "graphviz":
        raw = _graphviz(panels)
    if raw is None:
        raw = _matplotlib(panels)
    return _finish(raw, panels, prefix)


def _node_id(panel: int, name: str) -> str:
    return f"n{panel}-{name}"


def _edge_id(panel: int, k: int) -> str:
    return f"e{panel}-{k}"


def _fill(node: NodeInfo, mark: str | None) -> str:
    if mark:
        return FILLS[mark]
    return NEURON_FILL if node.spec else PLAIN_FILL


def _label_lines(node: NodeInfo) -> list[str]:
    lines = [node.name]
    if node.label != node.name:
        lines.append(node.label)
    shape = re.sub(r" (float|bfloat|int|uint|bool|complex)\w*", "", node.shape)
    if shape:
        lines.append(shape)
    return [line if len(line) <= _LINE_CHARS else line[:_LINE_CHARS - 1] + "…" for line in lines]


def _edges(graph: GraphSnapshot) -> list[tuple[str, str]]:
    names = set(graph.names)
    return [(src, n.name) for n in graph.nodes for src in n.inputs if src in names]


def _matplotlib(panels: list[Panel]) -> str:
    """Draw with matplotlib (no pyplot state); returns the SVG text."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
        from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    except ImportError as exc:
        raise ImportError("drawing graphs needs graphviz (`dot` on PATH) or matplotlib (pip install matplotlib)") \
            from exc

    layouts = [layered_layout(p.graph.names, _edges(p.graph)) for p in panels]
    sizes = [((max((x for x, _ in lay.values()), default=0) + 1) * _COLUMN,
              (max((k for _, k in lay.values()), default=0) + 1) * _LAYER) for lay in layouts]
    gap = 0.3
    width = sum(w for w, _ in sizes) + gap * (len(panels) + 1)
    height = max(h for _, h in sizes) + _TITLE
    fig = Figure(figsize=(width, height))
    left = gap
    for index, (panel, lay, (w, h)) in enumerate(zip(panels, layouts, sizes)):
        ax = fig.add_axes((left / width, (height - _TITLE - h) / height, w / width, h / height))
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.axis("off")
        fig.text((left + w / 2) / width, 1 - 0.05 / height, panel.title, ha="center", va="top",
                 fontsize=9, fontweight="bold", color=TEXT_COLOUR)
        centre = {n: (x * _COLUMN + _COLUMN / 2, k * _LAYER + _LAYER / 2) for n, (x, k) in lay.items()}
        for k, (src, dst) in enumerate(_edges(panel.graph)):
            (x0, y0), (x1, y1) = centre[src], centre[dst]
            arrow = FancyArrowPatch((x0, y0 + _BOX_H / 2), (x1, y1 - _BOX_H / 2), arrowstyle="-|>",
                                    mutation_scale=6, lw=0.6, color=EDGE_COLOUR, shrinkA=0, shrinkB=0, zorder=1)
            arrow.set_gid(_edge_id(index, k))
            ax.add_artist(arrow)
        for node in panel.graph.nodes:
            x, y = centre[node.name]
            mark = panel.marks.get(node.name)
            box = FancyBboxPatch((x - _BOX_W / 2, y - _BOX_H / 2), _BOX_W, _BOX_H,
                                 boxstyle="round,pad=0,rounding_size=0.06", facecolor=_fill(node, mark),
                                 edgecolor=TEXT_COLOUR if mark else EDGE_COLOUR, lw=1.0 if mark else 0.6, zorder=2)
            box.set_gid(_node_id(index, node.name))
            ax.add_artist(box)
            ax.text(x, y, "\n".join(_label_lines(node)), ha="center", va="center", fontsize=_FONT,
                    color=TEXT_COLOUR, zorder=3, linespacing=1.15)
        left += w + gap
    out = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "snnopt"}):
        fig.savefig(out, format="svg", metadata={"Date": None})
    return out.getvalue()


def _graphviz(panels: list[Panel]) -> str | None:
    """Lay out and draw with ``dot -Tsvg``; None (after a warning) when dot fails."""
    def quote(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    lines = ["digraph snnopt {",
             'graph [rankdir=TB, nodesep=0.15, ranksep=0.3, fontname="Helvetica", fontsize=11];',
             f'node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=8, margin="0.06,0.03", '
             f'color="{EDGE_COLOUR}", fontcolor="{TEXT_COLOUR}", penwidth=0.7];',
             f'edge [color="{EDGE_COLOUR}", arrowsize=0.5, penwidth=0.7];']
    for index, panel in enumerate(panels):
        lines.append(f"subgraph cluster_{index} {{ label={quote(panel.title)}; color=\"#d5d9e0\";")
        for node in panel.graph.nodes:
            mark = panel.marks.get(node.name)
            lines.append(f"{quote(_node_id(index, node.name))} [id={quote(_node_id(index, node.name))}, "
                         f"label={quote(chr(10).join(_label_lines(node)))}, fillcolor={quote(_fill(node, mark))}"
                         + (f', color="{TEXT_COLOUR}", penwidth=1.2' if mark else "") + "];")
        for k, (src, dst) in enumerate(_edges(panel.graph)):
            lines.append(f"{quote(_node_id(index, src))} -> {quote(_node_id(index, dst))} "
                         f"[id={quote(_edge_id(index, k))}];")
        lines.append("}")
    lines.append("}")
    try:
        done = subprocess.run(["dot", "-Tsvg"], input="\n".join(lines), capture_output=True, text=True, timeout=120,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("graphviz failed (%s); drawing with matplotlib", exc)
        return None
    if done.returncode != 0:
        log.warning("graphviz failed (%s); drawing with matplotlib", done.stderr.strip())
        return None
    return done.stdout


def _finish(raw: str, panels: list[Panel], prefix: str) -> str:
    """Strip namespaces and metadata (parsing drops the prolog and comments); give node and
    edge groups their title, class and data attributes; prefix every id (and the references
    to it)."""
    root = ET.fromstring(raw)
    for el in root.iter():
        el.tag = el.tag.rsplit("}", 1)[-1]
        for key in [k for k in el.attrib if k.startswith("{")]:
            el.attrib[key.rsplit("}", 1)[-1]] = el.attrib.pop(key)
    for parent in list(root.iter()):
        for child in [c for c in parent if c.tag == "metadata"]:
            parent.remove(child)
    nodes = {_node_id(i, n.name): (i, n) for i, p in enumerate(panels) for n in p.graph.nodes}
    edges = {_edge_id(i, k): f"{src} \u2192 {dst}" for i, p in enumerate(panels)
             for k, (src, dst) in enumerate(_edges(p.graph))}
    for el in root.iter("g"):
        if el.get("id", "") in edges:
            _set_title(el, edges[el.get("id")])
            el.set("class", "edge")
        found = nodes.get(el.get("id", ""))
        if found is None:
            for title in [c for c in el if c.tag == "title" and el.get("id", "") not in edges]:
                el.remove(title)  # graphviz names the graph and clusters: no tooltip for those
            continue
        index, node = found
        panel = panels[index]
        mark = panel.marks.get(node.name)
        _set_title(el, node.tooltip() + (f"\n[{MARK_LABELS[mark]}]" if mark else ""))
        el.set("class", " ".join(["node"] + ([mark] if mark else []) + (["neuron"] if node.spec else [])))
        el.set("data-node", node.name)
        el.set("data-panel", panel.key)
    ids = {el.get("id") for el in root.iter() if el.get("id")}
    reference = re.compile(r"(url\(#|^#)([^)\s]+)")

    def renamed(match):
        name = match.group(2)
        return match.group(1) + (f"{prefix}-{name}" if name in ids else name)

    for el in root.iter():
        for key, value in list(el.attrib.items()):
            if key == "id":
                el.set(key, f"{prefix}-{value}")
            elif "#" in value:
                el.set(key, reference.sub(renamed, value))
    root.set("class", "graph")
    return ET.tostring(root, encoding="unicode")


def _set_title(el: ET.Element, text: str) -> None:
    """Make ``text`` the hover tooltip (the first ``<title>`` child) of ``el``."""
    for old in [c for c in el if c.tag == "title"]:
        el.remove(old)
    title = ET.Element("title")
    title.text = text
    el.insert(0, title)
