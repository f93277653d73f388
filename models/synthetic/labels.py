"""Labels on the model's BEV grid: segmentation masks and CenterPoint detection targets.

BEV grid (models/geometry.py): cell (iy, ix) covers x in xmin + [ix, ix+1) * cell and
y in ymin + [iy, iy+1) * cell; arrays are [..., Y, X].
Box regression channels at a centre cell: dx, dy (m, box centre minus cell centre), z (m),
log w, log l, log h (m), sin yaw, cos yaw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsefuse.models.synthetic.scene import CLASS_NAMES, Road, drivable_mask


@dataclass(frozen=True)
class BevGrid:
    xmin: float
    ymin: float
    cell: float  # m
    shape: tuple[int, int]  # (Y, X)

    @property
    def xmax(self) -> float:
        return self.xmin + self.cell * self.shape[1]

    @property
    def ymax(self) -> float:
        return self.ymin + self.cell * self.shape[0]

    def centres(self, sub: int = 1) -> np.ndarray:
        """[Y*sub, X*sub, 2] (x, y) of sub-cell centres, m."""
        step = self.cell / sub
        x = self.xmin + (np.arange(self.shape[1] * sub) + 0.5) * step
        y = self.ymin + (np.arange(self.shape[0] * sub) + 0.5) * step
        xx, yy = np.meshgrid(x, y)
        return np.stack([xx, yy], -1)

    def contains(self, xy: np.ndarray) -> np.ndarray:
        return (
            (xy[..., 0] >= self.xmin)
            & (xy[..., 0] < self.xmax)
            & (xy[..., 1] >= self.ymin)
            & (xy[..., 1] < self.ymax)
        )


def points_in_boxes_bev(xy: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[N, ...] bool: which points xy[..., 2] fall inside each box footprint."""
    out = np.zeros((len(boxes),) + xy.shape[:-1], bool)
    for i, (x, y, _, w, l, _, yaw) in enumerate(boxes):
        dx, dy = xy[..., 0] - x, xy[..., 1] - y
        c, s = np.cos(yaw), np.sin(yaw)
        out[i] = (np.abs(c * dx + s * dy) <= l / 2) & (np.abs(-s * dx + c * dy) <= w / 2)
    return out


GROUND_CLASS = 0  # point_classes: ground / background
ABOVE_GROUND_M = 0.25  # a point this high outside every labelled box hit an unlabelled object
BOX_MARGIN_M = 0.2  # footprint margin when assigning LiDAR points to labelled boxes


def point_classes(points: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """int64 [P] class of each ego point [P, >=3]: 0 ground, 1 + label inside a labelled box's
    footprint (and above the ground), 1 + len(CLASS_NAMES) for any other point above the ground
    (street clutter, walls: "other object")."""
    xyz = np.asarray(points, np.float64)[:, :3]
    above = xyz[:, 2] >= ABOVE_GROUND_M
    out = np.where(above, 1 + len(CLASS_NAMES), GROUND_CLASS).astype(np.int64)
    if len(boxes) and len(xyz):
        grown = np.asarray(boxes, np.float64).copy()
        grown[:, 3:5] += 2 * BOX_MARGIN_M  # surface hits with range noise land just outside the box
        inside = points_in_boxes_bev(xyz[:, :2], grown) & (xyz[:, 2] > 0.05)
        hit = inside.any(0)
        out[hit] = 1 + np.asarray(labels, np.int64)[inside.argmax(0)[hit]]
    return out


def seg_masks(
    roads: tuple[Road, ...], boxes: np.ndarray, labels: np.ndarray, grid: BevGrid, sub: int = 4
) -> np.ndarray:
    """uint8 [1 + num_classes, Y, X]: drivable (≥ half of the cell), then per-class occupancy."""
    y_size, x_size = grid.shape
    drive = drivable_mask(roads, grid.centres(sub)).reshape(y_size, sub, x_size, sub).mean((1, 3)) >= 0.5
    return np.concatenate([drive[None].astype(np.uint8), object_masks(boxes, labels, grid, sub)])


def object_masks(boxes: np.ndarray, labels: np.ndarray, grid: BevGrid, sub: int = 4) -> np.ndarray:
    """uint8 [num_classes, Y, X]: a cell is occupied by a class when any of its sub x sub sample
    points falls inside a box footprint of that class, or when it holds the box centre."""
    y_size, x_size = grid.shape
    xy = grid.centres(sub)
    masks = np.zeros((len(CLASS_NAMES), y_size, x_size), np.uint8)
    for i, cls in enumerate(labels):
        # rasterize only the window of cells the box's bounding circle can touch
        r = 0.5 * float(np.hypot(boxes[i, 3], boxes[i, 4]))
        y0, x0 = _cell_of(boxes[i, :2] - r, grid)
        y1, x1 = _cell_of(boxes[i, :2] + r, grid)
        y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1 + 1, y_size), min(x1 + 1, x_size)
        if y0 < y1 and x0 < x1:
            window = xy[y0 * sub : y1 * sub, x0 * sub : x1 * sub]
            inside = points_in_boxes_bev(window, boxes[i : i + 1])[0]
            masks[cls, y0:y1, x0:x1] |= inside.reshape(y1 - y0, sub, x1 - x0, sub).any((1, 3))
        iy, ix = _cell_of(boxes[i, :2], grid)
        if 0 <= iy < y_size and 0 <= ix < x_size:
            masks[cls, iy, ix] = 1
    return masks


def _cell_of(xy: np.ndarray, grid: BevGrid) -> tuple[int, int]:
    return int(np.floor((xy[1] - grid.ymin) / grid.cell)), int(np.floor((xy[0] - grid.xmin) / grid.cell))


def gaussian_radius(length_cells: float, width_cells: float, min_overlap: float = 0.1) -> float:
    """CornerNet / CenterPoint radius (cells): the smallest of the three IoU ≥ min_overlap cases."""
    h, w = length_cells, width_cells
    b1, c1 = h + w, w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + np.sqrt(b1**2 - 4 * c1)) / 2
    b2, c2 = 2 * (h + w), (1 - min_overlap) * w * h
    r2 = (b2 + np.sqrt(b2**2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (h + w), (min_overlap - 1) * w * h
    r3 = (b3 + np.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return float(min(r1, r2, r3))


@dataclass(frozen=True)
class DetTargets:
    heatmap: np.ndarray  # [C, Y, X] f32 in [0, 1], 1 exactly at object centre cells
    boxes: np.ndarray  # [8, Y, X] f32 regression targets (valid where mask)
    mask: np.ndarray  # [Y, X] bool: cells holding an object centre


def detection_targets(
    boxes: np.ndarray, labels: np.ndarray, grid: BevGrid, min_radius: int = 1
) -> DetTargets:
    """CenterPoint targets: a Gaussian peak per object at its centre cell, regression there."""
    y_size, x_size = grid.shape
    heat = np.zeros((len(CLASS_NAMES), y_size, x_size), np.float32)
    reg = np.zeros((8, y_size, x_size), np.float32)
    mask = np.zeros((y_size, x_size), bool)
    yy, xx = np.mgrid[0:y_size, 0:x_size]
    for (x, y, z, w, l, h, yaw), cls in zip(boxes, labels, strict=True):
        iy, ix = _cell_of(np.array([x, y]), grid)
        if not (0 <= iy < y_size and 0 <= ix < x_size):
            continue
        radius = max(min_radius, int(gaussian_radius(l / grid.cell, w / grid.cell)))
        sigma = (2 * radius + 1) / 6.0
        g = np.exp(-((yy - iy) ** 2 + (xx - ix) ** 2) / (2 * sigma**2))
        g[np.maximum(np.abs(yy - iy), np.abs(xx - ix)) > radius] = 0.0
        heat[cls] = np.maximum(heat[cls], g)
        cx = grid.xmin + (ix + 0.5) * grid.cell
        cy = grid.ymin + (iy + 0.5) * grid.cell
        reg[:, iy, ix] = (x - cx, y - cy, z, np.log(w), np.log(l), np.log(h), np.sin(yaw), np.cos(yaw))
        mask[iy, ix] = True
    return DetTargets(heat, reg, mask)
