"""The per-pass summary (pass, node counts, created, erased, what was rewritten), as rows
for the HTML page and as a plain-text table for the terminal."""

from __future__ import annotations

from collections import Counter

from .record import Inspection, PassRecord

HEADER = ("pass", "nodes before", "nodes after", "created", "erased", "rewrites / notes")


def pass_outcome(record: PassRecord) -> str:
    """``"2 rewritten, 1 eager"`` from the pass's notes, else what changed in the graph."""
    counts = Counter(note.kind for note in record.notes)
    if counts:
        return ", ".join(f"{k} {kind}" for kind, k in counts.items())
    if record.changed:
        return f"{len(record.changed)} changed in place"
    return "modified" if record.modified else "no change"


def pass_rows(inspection: Inspection) -> list[tuple]:
    """One row per pass that ran, then one for the pass that failed (if any)."""
    rows = [(r.name, len(r.before), len(r.after), len(r.created), len(r.erased), pass_outcome(r))
            for r in inspection.passes]
    failure = inspection.failure
    if failure is not None and failure.stage != "trace":
        size = len(failure.graph) if failure.graph is not None else "-"
        rows.append((failure.stage, size, "-", "-", "-", "FAILED"))
    return rows


def format_table(inspection: Inspection) -> str:
    """The summary as an aligned text table, with a status line above it."""
    if inspection.failure is not None and inspection.failure.stage == "trace":
        failure = inspection.failure
        where = f" (stopped after node `{failure.last_node}`)" if failure.last_node else ""
        return f"{inspection.model}: tracing failed{where}\n  {failure.message}"
    rows = [HEADER] + [tuple(str(v) for v in row) for row in pass_rows(inspection)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]

    def line(row):
        cells = [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in range(1, 5)] + [row[5]]
        return "  ".join(cells).rstrip()

    title = f"{inspection.model}  mode={inspection.mode}  inputs=" + \
        ", ".join(str(list(s)) for s in inspection.input_shapes)
    lines = [title, line(rows[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in rows[1:]]
    if inspection.failure is not None:
        lines.append(f"failed in {inspection.failure.stage}: {inspection.failure.message}")
    return "\n".join(lines)
