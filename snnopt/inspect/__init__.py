"""Inspect what the compiler does to a model: the graph before and after every pass, as a
self-contained HTML report (``snnopt inspect`` / ``tools/inspect_graph.py``).

    inspection = inspect_model(model, (x,), mode="sparse")
    write_report(inspection, "report.html")
    summary = format_table(inspection)   # the terminal table
"""

from .page import render_page, write_report
from .record import Failure, GraphSnapshot, Inspection, NodeInfo, PassRecord, inspect_model
from .summary import format_table

__all__ = ["inspect_model", "render_page", "write_report", "format_table", "Inspection", "PassRecord",
           "GraphSnapshot", "NodeInfo", "Failure"]
