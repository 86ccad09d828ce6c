"""The finance report's charts: drawn once with reportlab.graphics, then rendered as inline
SVG for the HTML form or placed in the PDF as they are, so both forms show the same picture.

Values arrive as Decimal and are plotted as floats: a chart's geometry is pixels, never money.

One key far larger than the rest (an account with most of the month's revenue) would flatten
every other bar to a line. Bar charts therefore cut such an outlier: when the largest bar is
more than OUTLIER times the next, the axis ends a little above the next and the outlier's bar
stops at the edge with its true value written on it. The others keep a scale they can be read
on and the outlier's figure is still there. A log scale was the other choice: it cannot show
a loss (a negative margin) and makes bar lengths lie about ratios; top N + "others" alone
does not help when the top key is itself the outlier.
"""

import re
from collections.abc import Sequence
from decimal import Decimal

from reportlab.graphics import renderSVG
from reportlab.graphics.charts.barcharts import HorizontalBarChart, VerticalBarChart
from reportlab.graphics.charts.legends import Legend
from reportlab.graphics.charts.linecharts import HorizontalLineChart
from reportlab.graphics.shapes import Drawing, String
from reportlab.lib import colors

WIDTH = 500
# Font sizes in points at the drawing's own size; the PDF draws it at about 3/4 of that, so
# axis text prints at 7.5 points, about the smallest that reads well on paper.
AXIS_FONT = 10
TITLE_FONT = 11
# A bar more than OUTLIER times the next largest is cut at CUT times the next (module doc).
OUTLIER = 5.0
CUT = 1.3
BLUE, ORANGE, PURPLE, GREEN = (
    colors.HexColor(code) for code in ("#2f6db5", "#e0893a", "#8a5cc2", "#3c9a5f")
)
# A series keeps its colour from chart to chart; others take the palette in turn.
COLOURS = {"revenue": BLUE, "cost": ORANGE, "energy": ORANGE, "GPU": PURPLE, "margin": GREEN}
PALETTE = (BLUE, ORANGE, PURPLE, GREEN)
Series = Sequence[tuple[str, Sequence[Decimal | int | None]]]
Labels = list[list[str]] | None


def bars(
    *,
    title: str,
    categories: Sequence[str],
    series: Series,
    stacked: bool = False,
    height: int = 230,
) -> Drawing:
    """Vertical bars per category, one colour per series (side by side, or stacked)."""
    drawing = _frame(title, height)
    chart = VerticalBarChart()
    chart.x, chart.y = 60, 58
    chart.width, chart.height = WIDTH - 80, height - 96
    data = [_floats(values) for _, values in series] or [[0.0]]
    chart.data, labels = _cut(data, stacked=stacked)
    if labels is not None:
        chart.barLabelFormat = "values"
        chart.barLabelArray = labels
        chart.barLabels.fontSize = AXIS_FONT - 1
        chart.barLabels.boxAnchor = "s"
    chart.categoryAxis.categoryNames = [_short(name, 18) for name in categories] or [""]
    chart.categoryAxis.labels.angle = 25 if len(categories) > 4 else 0
    chart.categoryAxis.labels.boxAnchor = "ne" if len(categories) > 4 else "n"
    chart.categoryAxis.labels.fontSize = AXIS_FONT
    chart.categoryAxis.labelAxisMode = "low"  # below the chart, clear of bars of a loss
    _value_axis(chart, stacked)
    chart.bars.strokeColor = None
    if stacked:
        chart.categoryAxis.style = "stacked"
    for index, (name, _) in enumerate(series):
        chart.bars[index].fillColor = _colour(name, index)
    drawing.add(chart)
    _legend(drawing, [name for name, _ in series], height)
    return drawing


def ranking(*, title: str, categories: Sequence[str], values: Sequence[Decimal | int]) -> Drawing:
    """Horizontal bars, the largest first: a top ten of accounts, each with its value."""
    height = 60 + 18 * max(len(categories), 1)
    drawing = _frame(title, height)
    chart = HorizontalBarChart()
    chart.x, chart.y = 150, 20
    chart.width, chart.height = WIDTH - 200, height - 50
    data = [_floats(list(reversed(values)))]
    chart.data, _ = _cut(data, stacked=False)
    chart.barLabelFormat = "values"
    chart.barLabelArray = [[_compact(value) for value in data[0]]]
    chart.barLabels.fontSize = AXIS_FONT - 1
    chart.barLabels.boxAnchor = "w"
    chart.barLabels.dx = 3
    chart.categoryAxis.categoryNames = [_short(name, 26) for name in reversed(categories)] or [""]
    chart.categoryAxis.labels.fontSize = AXIS_FONT
    _value_axis(chart, False)
    chart.bars.strokeColor = None
    chart.bars[0].fillColor = BLUE
    drawing.add(chart)
    return drawing


def trend(*, title: str, days: Sequence[str], series: Series, height: int = 230) -> Drawing:
    """Lines over the period's days."""
    drawing = _frame(title, height)
    chart = HorizontalLineChart()
    chart.x, chart.y = 60, 58
    chart.width, chart.height = WIDTH - 80, height - 96
    chart.data = [_floats(values) for _, values in series] or [[0.0]]
    step = max(1, len(days) // 10)
    chart.categoryAxis.categoryNames = [
        day if i % step == 0 else "" for i, day in enumerate(days)
    ] or [""]
    chart.categoryAxis.labels.fontSize = AXIS_FONT
    chart.categoryAxis.labelAxisMode = "low"
    chart.categoryAxis.labels.angle = 25
    chart.categoryAxis.labels.boxAnchor = "ne"
    _value_axis(chart, False)
    for index, (name, _) in enumerate(series):
        chart.lines[index].strokeColor = _colour(name, index)
        chart.lines[index].strokeWidth = 1.5
    drawing.add(chart)
    _legend(drawing, [name for name, _ in series], height)
    return drawing


def svg(drawing: Drawing, *, name: str) -> str:
    """The drawing as an inline <svg> element. reportlab names its clip path and group the
    same in every drawing, so ids get the chart's name: one page holds several charts."""
    text = renderSVG.drawToString(drawing)
    text = text[text.index("<svg") :]
    text = re.sub(r'id="([^"]+)"', rf'id="{name}-\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{name}-\1)", text)
    return re.sub(r'href="#([^"]+)"', rf'href="#{name}-\1"', text)


def _frame(title: str, height: int) -> Drawing:
    drawing = Drawing(WIDTH, height)
    drawing.add(String(10, height - 16, title, fontName="Helvetica-Bold", fontSize=TITLE_FONT))
    return drawing


def _value_axis(
    chart: VerticalBarChart | HorizontalBarChart | HorizontalLineChart, stacked: bool
) -> None:
    axis = chart.valueAxis
    axis.labels.fontSize = AXIS_FONT
    axis.labelTextFormat = _compact
    axis.visibleGrid = True
    axis.gridStrokeColor = colors.HexColor("#dddddd")
    values = [v for row in chart.data for v in row]
    if stacked:
        values = [sum(column) for column in zip(*chart.data, strict=True)]
    # Bars start at zero even when every value is positive; negatives (a loss) show below it.
    axis.valueMin = min([0.0, *values])
    axis.valueMax = max([0.0, *values]) or 1.0


def _cut(data: list[list[float]], *, stacked: bool) -> tuple[list[list[float]], Labels]:
    """The data as plotted, an outlier cut (module doc), and the labels that give the cut
    bars their true values (None when nothing was cut). Stacked bars are cut by their
    column's total, each part in proportion, the total written on top."""
    columns = [list(column) for column in zip(*data, strict=True)]
    # A category's size: its stack's height, or its largest bar (in either direction).
    sizes = [abs(sum(c)) if stacked else max(abs(v) for v in c) for c in columns]
    ranked = sorted(sizes, reverse=True)
    if len(ranked) < 2 or ranked[1] <= 0 or ranked[0] <= OUTLIER * ranked[1]:
        return data, None
    cap = CUT * ranked[1]
    if stacked:
        factors = [min(1.0, cap / size) if size else 1.0 for size in sizes]
        plotted = [[v * f for v, f in zip(row, factors, strict=True)] for row in data]
        top = len(data) - 1
        labels = [
            [
                _compact(sum(columns[i])) if n == top and factors[i] < 1 else ""
                for i in range(len(columns))
            ]
            for n in range(len(data))
        ]
        return plotted, labels
    plotted = [[max(-cap, min(cap, v)) for v in row] for row in data]
    labels = [[_compact(v) if abs(v) > cap else "" for v in row] for row in data]
    return plotted, labels


def _legend(drawing: Drawing, names: Sequence[str], height: int) -> None:
    if len(names) < 2:
        return
    legend = Legend()
    legend.x, legend.y = 60, height - 24
    legend.columnMaximum = 1
    legend.deltax = 75
    legend.fontSize = AXIS_FONT
    legend.boxAnchor = "nw"
    legend.alignment = "right"
    legend.dxTextSpace = 4
    legend.colorNamePairs = [(_colour(name, i), name) for i, name in enumerate(names)]
    drawing.add(legend)


def _colour(name: str, index: int) -> colors.Color:
    return COLOURS.get(name, PALETTE[index % len(PALETTE)])


def _floats(values: Sequence[Decimal | int | None]) -> list[float]:
    """Plotted values; one zero for an empty series, so an empty period still draws axes."""
    return [float(value or 0) for value in values] or [0.0]


def _compact(value: float) -> str:
    for size, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def _short(name: str, length: int) -> str:
    return name if len(name) <= length else name[: length - 1] + "…"
