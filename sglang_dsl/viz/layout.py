"""A top-down layered layout of a `Picture`, for the HTML format's own SVG (no Graphviz needed).

Rows: program arguments first, then each step one row below the lowest step it follows (longest path over
``next``/``branch``/``merge`` edges). Columns: every stream gets a lane; a fork's branches split their
stream's lane side by side, each as wide as the forks nested in it need, so nested forks never overlap."""

from __future__ import annotations

from dataclasses import dataclass

from sglang_dsl.viz.model import Box, Picture

BOX_WIDTH = 264
LINE_HEIGHT = 15
PADDING = 10  # inside a box, above the first line and below the last
RUN_BAR = 8  # height of the cached/computed token bar of a box with run stats
LANE_GAP = 36
ROW_GAP = 34
MARGIN = 24
DATA_BULGE = 60  # room right of the lanes for data edges, which curve out to the right


@dataclass(frozen=True)
class Placed:
    """A box at ``(x, y)`` (its top-left corner), ``width`` by ``height`` pixels."""

    box: Box
    x: float
    y: float
    width: float
    height: float

    @property
    def center(self) -> float:
        return self.x + self.width / 2

    @property
    def bottom(self) -> float:
        return self.y + self.height


@dataclass(frozen=True)
class Layout:
    placed: dict[str, Placed]
    width: float
    height: float


def box_height(box: Box) -> float:
    bar = RUN_BAR + 4 if box.stats is not None and box.stats.prompt_tokens else 0
    return 2 * PADDING + LINE_HEIGHT * len(box.label_lines) + bar


def layout(picture: Picture) -> Layout:
    """Where every box of ``picture`` goes."""
    rows = _rows(picture)
    streams = _Streams(picture)
    lanes = streams.centers()
    pitch = BOX_WIDTH + LANE_GAP
    arguments = [b for b in picture.boxes if b.op == "placeholder"]
    span = max(streams.width("main"), len(arguments))
    row_heights: dict[int, float] = {}
    for box in picture.boxes:
        row_heights[rows[box.name]] = max(row_heights.get(rows[box.name], 0), box_height(box))
    tops, y = {}, MARGIN
    for row in sorted(row_heights):
        tops[row], y = y, y + row_heights[row] + ROW_GAP
    placed: dict[str, Placed] = {}
    first_argument = (span - len(arguments)) / 2
    for box in picture.boxes:
        if box.op == "placeholder":
            lane = first_argument + arguments.index(box) + 0.5
        else:
            lane = lanes[box.stream] + (span - streams.width("main")) / 2
        x = MARGIN + lane * pitch - BOX_WIDTH / 2
        placed[box.name] = Placed(box, x, tops[rows[box.name]], BOX_WIDTH, box_height(box))
    return Layout(placed, 2 * MARGIN + span * pitch + DATA_BULGE, y - ROW_GAP + MARGIN)


def _rows(picture: Picture) -> dict[str, int]:
    first = 1 if picture.arguments else 0
    rows: dict[str, int] = {}
    incoming: dict[str, list[str]] = {}
    for edge in picture.edges:
        if edge.kind != "data":
            incoming.setdefault(edge.target, []).append(edge.source)
    for box in picture.boxes:  # program order is a topological order
        if box.op == "placeholder":
            rows[box.name] = 0
        else:
            rows[box.name] = max((rows[s] + 1 for s in incoming.get(box.name, ()) if s in rows), default=first)
    return rows


class _Streams:
    """The fork tree of a picture's streams: the forks each stream opens (as their branch streams), and how many
    lanes each stream needs (one, or what its widest fork's branches need side by side)."""

    def __init__(self, picture: Picture) -> None:
        self.forks: dict[str, list[list[str]]] = {stream: [] for stream in picture.streams}
        for box in picture.boxes:
            if box.op == "fork":
                self.forks[box.stream].append([s for s in picture.streams if _opened_by(s, box.name)])
        self._widths: dict[str, int] = {}

    def width(self, stream: str) -> int:
        if stream not in self._widths:
            widest = max((sum(map(self.width, branches)) for branches in self.forks[stream]), default=0)
            self._widths[stream] = max(1, widest)
        return self._widths[stream]

    def centers(self) -> dict[str, float]:
        """The lane (in lane widths from the left, at the lane's center) of every stream."""
        centers: dict[str, float] = {}

        def place(stream: str, left: float) -> None:
            centers[stream] = left + self.width(stream) / 2
            for branches in self.forks[stream]:
                start = left + (self.width(stream) - sum(map(self.width, branches))) / 2
                for branch in branches:
                    place(branch, start)
                    start += self.width(branch)

        place("main", 0)
        return centers


def _opened_by(stream: str, fork: str) -> bool:
    parent, _, index = stream.rpartition(".")
    return parent == fork and index.isdigit()
