"""A tiny live plot of training loss and validation score, drawn with QPainter (no matplotlib)."""

from __future__ import annotations

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOUR = QColor(90, 170, 255)
SCORE_COLOUR = QColor(255, 170, 40)


class TrainingPlot(QWidget):
    """Loss (blue, left axis from 0 to its maximum) and validation score (orange, 0..1) over steps."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.losses: list[tuple[int, float]] = []
        self.scores: list[tuple[int, float]] = []
        self.score_name = "validation"
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def clear(self) -> None:
        self.losses, self.scores = [], []
        self.update()

    def add_loss(self, step: int, loss: float) -> None:
        self.losses.append((step, loss))
        self.update()

    def add_score(self, step: int, score: float, name: str = "validation") -> None:
        self.scores.append((step, score))
        self.score_name = name
        self.update()

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt naming)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width(), self.height()
        left, right, top, bottom = 8, 8, 18, 16
        pw, ph = max(w - left - right, 1), max(h - top - bottom, 1)
        painter.fillRect(0, 0, w, h, QColor(30, 33, 40))
        painter.setPen(QPen(QColor(80, 85, 95), 1))
        for i in range(5):
            y = top + ph * i / 4
            painter.drawLine(QPointF(left, y), QPointF(left + pw, y))
        last_step = max([s for s, _ in self.losses + self.scores] or [1])
        loss_top = max([v for _, v in self.losses] or [1.0]) or 1.0

        def polyline(points: list[tuple[int, float]], top_value: float, colour: QColor) -> None:
            if not points:
                return
            poly = QPolygonF([QPointF(left + pw * s / last_step, top + ph * (1 - min(v / top_value, 1.0)))
                              for s, v in points])
            painter.setPen(QPen(colour, 2))
            painter.drawPolyline(poly)
            if len(points) == 1:
                painter.drawEllipse(poly[0], 2, 2)

        polyline(self.losses, loss_top, LOSS_COLOUR)
        polyline(self.scores, 1.0, SCORE_COLOUR)
        painter.setPen(LOSS_COLOUR)
        text = f"loss {self.losses[-1][1]:.3f}" if self.losses else "loss"
        painter.drawText(left, 13, text)
        painter.setPen(SCORE_COLOUR)
        score = f"{self.score_name} {self.scores[-1][1]:.3f}" if self.scores else self.score_name
        painter.drawText(left + pw // 2, 13, score)
        painter.setPen(QColor(160, 160, 160))
        painter.drawText(left, h - 3, "0")
        painter.drawText(left + pw - 80, h - 15, 80, 14, int(Qt.AlignmentFlag.AlignRight.value), f"step {last_step}")
        painter.end()
