"""pareto.html: the Pareto picture as one self-contained page (inline SVG, no script, no network), which MLflow's
artifact viewer shows: hover a point for its run name and values; the front's step line, the winners per
objective and the threshold baseline as in pareto.png."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

FrontView = Any  # study.tracking.pareto.FrontView (not imported: pareto imports this module)

WIDTH, HEIGHT, MARGIN, LEGEND = 760, 460, 60, 210  # pixels: plot area, axis margin, legend column on the right
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")  # one per family


def write_front_html(view: FrontView, path: Path) -> Path:
    """Write the page and return its path."""
    place, bounds = _scales(view)
    families = sorted({p["family"] for p in view.points})
    colour = {f: COLOURS[i % len(COLOURS)] for i, f in enumerate(families)}
    parts = [_axes(view, place, bounds)]
    for b in view.baseline:
        bx, by = place(b["x"], b["y"])
        parts.append(f'<line x1="{bx:.1f}" y1="{MARGIN}" x2="{bx:.1f}" y2="{HEIGHT - MARGIN}" class="ref"/>')
        parts.append(f'<line x1="{MARGIN}" y1="{by:.1f}" x2="{WIDTH - MARGIN}" y2="{by:.1f}" class="ref"/>')
    if view.step:
        line = " ".join(f"{px:.1f},{py:.1f}" for px, py in (place(x, y) for x, y in view.step))
        parts.append(f'<polyline points="{line}" class="front"/>')
    for p in view.points:
        parts.append(_marker(p, place, "#888" if p["stopped"] else colour[p["family"]], view))
    for b in view.baseline:
        parts.append(_marker(b, place, "#555", view, shape="diamond"))
    for metric, w in view.winners.items():
        wx, wy = place(w["x"], w["y"])
        parts.append(f'<circle cx="{wx:.1f}" cy="{wy:.1f}" r="11" class="winner"><title>best {escape(metric)}: '
                     f'{escape(w["name"])}</title></circle>')  # fmt: skip
    legend = [(colour[f], f) for f in families] + [("#555", "threshold baseline (untrained)")]
    parts.append(_legend(legend, [f"best {m}: {w['name']}" for m, w in view.winners.items()]))
    svg = "\n".join(parts)
    title = f"Pareto front: {escape(view.x.metric)} vs {escape(view.y.metric)}"
    path.write_text(PAGE.format(title=title, width=WIDTH + LEGEND, height=HEIGHT, svg=svg))
    return path


def _scales(view: FrontView) -> tuple[Any, tuple[float, float, float, float]]:
    """Data (x, y) -> pixel (x, y) over every point shown, the step line's edges included, with 5% padding."""
    xs = [p["x"] for p in view.points + view.baseline] + [x for x, _ in view.step]
    ys = [p["y"] for p in view.points + view.baseline] + [y for _, y in view.step]
    lo_x, hi_x = _padded(min(xs, default=0.0), max(xs, default=1.0))
    lo_y, hi_y = _padded(min(ys, default=0.0), max(ys, default=1.0))

    def place(x: float, y: float) -> tuple[float, float]:
        px = MARGIN + (x - lo_x) / (hi_x - lo_x) * (WIDTH - 2 * MARGIN)
        return px, HEIGHT - MARGIN - (y - lo_y) / (hi_y - lo_y) * (HEIGHT - 2 * MARGIN)

    return place, (lo_x, hi_x, lo_y, hi_y)


def _padded(low: float, high: float) -> tuple[float, float]:
    pad = (high - low) * 0.05 or 0.05
    return low - pad, high + pad


def _axes(view: FrontView, place: Any, bounds: tuple[float, float, float, float]) -> str:
    lo_x, hi_x, lo_y, hi_y = bounds
    ticks = []
    for i in range(5):
        tx, ty = lo_x + (hi_x - lo_x) * i / 4, lo_y + (hi_y - lo_y) * i / 4
        px, _ = place(tx, lo_y)
        _, py = place(lo_x, ty)
        ticks.append(f'<text x="{px:.1f}" y="{HEIGHT - MARGIN + 16}" class="tick">{tx:.3g}</text>')
        ticks.append(f'<text x="{MARGIN - 6}" y="{py + 4:.1f}" class="tick" text-anchor="end">{ty:.3g}</text>')
    return (
        f'<rect x="{MARGIN}" y="{MARGIN}" width="{WIDTH - 2 * MARGIN}" height="{HEIGHT - 2 * MARGIN}" class="box"/>'
        + "".join(ticks)
        + f'<text x="{WIDTH / 2}" y="{HEIGHT - 18}" class="label">{escape(view.x.metric)} ({view.x.mode})</text>'
        + f'<text x="16" y="{HEIGHT / 2}" class="label" transform="rotate(-90 16 {HEIGHT / 2})">'
        f"{escape(view.y.metric)} ({view.y.mode})</text>"
    )


def _marker(p: dict[str, Any], place: Any, colour: str, view: FrontView, shape: str = "circle") -> str:
    px, py = place(p["x"], p["y"])
    tip = f"{p['name']}\n{view.x.metric} = {p['x']:.4g}\n{view.y.metric} = {p['y']:.4g}"
    tip += "\non the Pareto front" if p.get("on_front") else ("\nstopped early" if p.get("stopped") else "")
    if shape == "diamond":
        body = f'<rect x="{px - 5:.1f}" y="{py - 5:.1f}" width="10" height="10" fill="{colour}" ' \
               f'transform="rotate(45 {px:.1f} {py:.1f})">'  # fmt: skip
        end = "</rect>"
    else:
        body, end = f'<circle cx="{px:.1f}" cy="{py:.1f}" r="6" fill="{colour}">', "</circle>"
    label = f'<text x="{px + 8:.1f}" y="{py - 8:.1f}" class="name">{escape(p["name"])}</text>'
    return f"{body}<title>{escape(tip)}</title>{end}{label}"


def _legend(entries: list[tuple[str, str]], winners: list[str]) -> str:
    x, rows = WIDTH + 10, []
    for i, (colour, text) in enumerate(entries):
        y = MARGIN + 18 * i
        rows.append(
            f'<circle cx="{x}" cy="{y}" r="5" fill="{colour}"/><text x="{x + 10}" y="{y + 4}">{escape(text)}</text>'
        )
    y = MARGIN + 18 * len(entries)
    rows.append(
        f'<line x1="{x - 6}" y1="{y}" x2="{x + 6}" y2="{y}" class="front"/>'
        f'<text x="{x + 10}" y="{y + 4}">Pareto front</text>'
    )
    for i, text in enumerate(winners, start=1):
        rows.append(f'<circle cx="{x}" cy="{y + 18 * i}" r="6" class="winner"/>'
                    f'<text x="{x + 10}" y="{y + 18 * i + 4}">{escape(text)}</text>')  # fmt: skip
    return "".join(rows)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 12px; }}
svg text {{ font-size: 12px; }} .tick {{ font-size: 10px; text-anchor: middle; }} .label {{ text-anchor: middle; }}
.name {{ font-size: 10px; fill: #333; }} .box {{ fill: none; stroke: #999; }}
.front {{ fill: none; stroke: #000; stroke-width: 1.5; }} .ref {{ stroke: #888; stroke-dasharray: 2 3; }}
.winner {{ fill: none; stroke: crimson; stroke-width: 2; }}
</style></head>
<body><h3>{title}</h3><p>Hover a point for its run name and values.</p>
<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">
{svg}
</svg></body></html>
"""
