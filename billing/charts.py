"""The finance report's charts: drawn once with reportlab.graphics, then rendered as inline
SVG for the HTML form or placed in the PDF as they are, so both forms show the same picture.

Values arrive as Decimal and are plotted as floats: a chart's geometry is pixels, never money.
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
BLUE, ORANGE, PURPLE, GREEN = (
    colors.HexColor(code) for code in ("#2f6db5", "#e0893a", "#8a5cc2", "#3c9a5f")
)
# A series keeps its colour from chart to chart; others take the palette in turn.
COLOURS = {"revenue": BLUE, "cost": ORANGE, "energy": ORANGE, "GPU": PURPLE, "margin": GREEN}
PALETTE = (BLUE, ORANGE, PURPLE, GREEN)
Series = Sequence[tuple[str, Sequence[Decimal | int | None]]]


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
    chart.data = [_floats(values) for _, values in series] or [[0.0]]
    chart.categoryAxis.categoryNames = [_short(name, 18) for name in categories] or [""]
    chart.categoryAxis.labels.angle = 25 if len(categories) > 4 else 0
    chart.categoryAxis.labels.boxAnchor = "ne" if len(categories) > 4 else "n"
    chart.categoryAxis.labels.fontSize = 7
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
    """Horizontal bars, the largest first: a top ten of accounts."""
    height = 60 + 16 * max(len(categories), 1)
    drawing = _frame(title, height)
    chart = HorizontalBarChart()
    chart.x, chart.y = 150, 20
    chart.width, chart.height = WIDTH - 180, height - 50
    chart.data = [_floats(list(reversed(values)))]
    chart.categoryAxis.categoryNames = [_short(name, 26) for name in reversed(categories)] or [""]
    chart.categoryAxis.labels.fontSize = 7
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
    chart.categoryAxis.labels.fontSize = 7
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
    drawing.add(String(10, height - 16, title, fontName="Helvetica-Bold", fontSize=10))
    return drawing


def _value_axis(
    chart: VerticalBarChart | HorizontalBarChart | HorizontalLineChart, stacked: bool
) -> None:
    axis = chart.valueAxis
    axis.labels.fontSize = 7
    axis.labelTextFormat = _compact
    axis.visibleGrid = True
    axis.gridStrokeColor = colors.HexColor("#dddddd")
    values = [v for row in chart.data for v in row]
    if stacked:
        values = [sum(column) for column in zip(*chart.data, strict=True)]
    # Bars start at zero even when every value is positive; negatives (a loss) show below it.
    axis.valueMin = min([0.0, *values])
    axis.valueMax = max([0.0, *values]) or 1.0


def _legend(drawing: Drawing, names: Sequence[str], height: int) -> None:
    if len(names) < 2:
        return
    legend = Legend()
    legend.x, legend.y = 60, height - 24
    legend.columnMaximum = 1
    legend.deltax = 75
    legend.fontSize = 7
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
