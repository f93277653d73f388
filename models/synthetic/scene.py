"""Procedural driving scenes: road layout, oriented 3D boxes and lighting, deterministic per seed.

Ego frame (models/rig.py): x forward, y left, z up, metres; the ground is the plane z = 0.
A box is (x, y, z, w, l, h, yaw): centre in metres, width across / length along its heading,
height, and yaw in radians CCW from +x. Objects stand on the ground (z = h / 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("car", "truck", "pedestrian", "barrier")
# Unlabelled street furniture (bins, bollards, utility boxes; hedges, skips, kiosks). Clutter copies the
# size, placement and LiDAR reflectivity of a labelled class, so LiDAR geometry alone cannot tell it
# from a pedestrian or a parked car; only its look in the cameras can (green, mottled: the LiDAR
# false-positive problem).
CLUTTER = len(CLASS_NAMES)
SEG_CLASSES: tuple[str, ...] = ("drivable", "car", "truck", "pedestrian", "barrier")
# Ground materials, used by the camera (colour), the LiDAR (intensity) and the labels (drivable).
GRASS, ROAD, SIDEWALK, MARKING = 0, 1, 2, 3

# (mean w, l, h), relative spread: nuScenes-like class statistics.
_SIZES = {
    0: ((1.95, 4.6, 1.7), 0.08),
    1: ((2.5, 8.0, 3.1), 0.15),
    2: ((0.65, 0.7, 1.75), 0.08),
    3: ((0.5, 2.2, 1.0), 0.1),
}
# Proposal kinds beyond the labelled classes; each becomes CLUTTER shaped like its look-alike class.
_SMALL_CLUTTER, _LARGE_CLUTTER = CLUTTER, CLUTTER + 1
_LOOK_ALIKE = {_SMALL_CLUTTER: 2, _LARGE_CLUTTER: 0}
_REFLECTIVITY = (0.35, 0.45, 0.2, 0.75)  # car, truck, pedestrian, barrier (retroreflective)
_EGO_HALF = (3.0, 1.4)  # half length, half width of the ego keep-out zone, m
_SCENE_EXTENT = 55.0  # objects are placed within |x|, |y| <= this, m


@dataclass(frozen=True)
class Road:
    """A straight road strip through (cx, cy) along ``heading``; lanes of ``lane_width``."""

    cx: float
    cy: float
    heading: float  # rad
    lanes: int
    lane_width: float  # m
    sidewalk: float  # sidewalk width on each side, m

    @property
    def half_width(self) -> float:
        return 0.5 * self.lanes * self.lane_width

    def local(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """xy[..., 2] -> (s along the road, t to the left of its centre line), metres."""
        c, s = math.cos(self.heading), math.sin(self.heading)
        dx, dy = xy[..., 0] - self.cx, xy[..., 1] - self.cy
        return c * dx + s * dy, -s * dx + c * dy

    def world(self, s: float, t: float) -> tuple[float, float]:
        c, si = math.cos(self.heading), math.sin(self.heading)
        return self.cx + c * s - si * t, self.cy + si * s + c * t


@dataclass(frozen=True)
class Lighting:
    brightness: float  # global gain on the rendered radiance
    noise_std: float  # additive Gaussian sensor noise on [0, 1] images
    night: bool
    sun_azimuth: float  # rad, direction the light comes from (shading of box faces)


@dataclass(frozen=True)
class Scene:
    seed: int
    roads: tuple[Road, ...]
    boxes: np.ndarray  # [N, 7] float64 (x, y, z, w, l, h, yaw)
    labels: np.ndarray  # [N] int64 index into CLASS_NAMES, or CLUTTER (never labelled)
    colors: np.ndarray  # [N, 3] float64 body colour in [0, 1]
    reflectivity: np.ndarray  # [N] float64 LiDAR reflectivity of the body
    lighting: Lighting


def ground_material(roads: tuple[Road, ...], xy: np.ndarray) -> np.ndarray:
    """Material id (GRASS / ROAD / SIDEWALK / MARKING) at ground points xy[..., 2]."""
    shape = xy.shape[:-1]
    drivable = np.zeros(shape, bool)
    near = np.zeros(shape, bool)
    local = [r.local(xy) for r in roads]
    for road, (_, t) in zip(roads, local, strict=True):
        drivable |= np.abs(t) <= road.half_width
        near |= np.abs(t) <= road.half_width + road.sidewalk
    out = np.full(shape, GRASS, np.int64)
    out[near] = SIDEWALK
    out[drivable] = ROAD
    for i, (road, (s, t)) in enumerate(zip(roads, local, strict=True)):
        inside_other = np.zeros(shape, bool)
        for j, (other, (_, t2)) in enumerate(zip(roads, local, strict=True)):
            if j != i:
                inside_other |= np.abs(t2) <= other.half_width + 0.5
        edge = np.abs(np.abs(t) - (road.half_width - 0.3)) < 0.08
        rel = (t + road.half_width) / road.lane_width
        k = np.round(rel)
        divider = (np.abs(rel - k) * road.lane_width < 0.08) & (k >= 1) & (k <= road.lanes - 1)
        dashed = np.mod(s, 9.0) < 3.0
        centre = (road.lanes % 2 == 0) & (k == road.lanes // 2)
        mark = (edge | (divider & (dashed | centre))) & ~inside_other & (np.abs(t) <= road.half_width)
        out[mark] = MARKING
    return out


def drivable_mask(roads: tuple[Road, ...], xy: np.ndarray) -> np.ndarray:
    m = ground_material(roads, xy)
    return (m == ROAD) | (m == MARKING)


def box_corners_bev(boxes: np.ndarray) -> np.ndarray:
    """boxes[N, 7] -> [N, 4, 2] footprint corners (counter-clockwise), metres."""
    x, y, _, w, l, _, yaw = (boxes[:, i] for i in range(7))
    c, s = np.cos(yaw), np.sin(yaw)
    lx = np.array([0.5, -0.5, -0.5, 0.5])[None] * l[:, None]
    ly = np.array([0.5, 0.5, -0.5, -0.5])[None] * w[:, None]
    return np.stack(
        [x[:, None] + c[:, None] * lx - s[:, None] * ly, y[:, None] + s[:, None] * lx + c[:, None] * ly],
        axis=-1,
    )


def box_corners_3d(boxes: np.ndarray) -> np.ndarray:
    """boxes[N, 7] -> [N, 8, 3] corners: 4 bottom then 4 top, footprint order as box_corners_bev."""
    bev = box_corners_bev(boxes)
    z0 = (boxes[:, 2] - boxes[:, 5] / 2)[:, None, None]
    z1 = (boxes[:, 2] + boxes[:, 5] / 2)[:, None, None]
    bottom = np.concatenate([bev, np.broadcast_to(z0, bev[..., :1].shape)], -1)
    top = np.concatenate([bev, np.broadcast_to(z1, bev[..., :1].shape)], -1)
    return np.concatenate([bottom, top], axis=1)


def _overlaps(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test of two convex quads [4, 2]."""
    for poly in (a, b):
        edges = np.roll(poly, -1, axis=0) - poly
        for ex, ey in edges:
            axis = np.array([-ey, ex])
            pa, pb = a @ axis, b @ axis
            if pa.max() < pb.min() or pb.max() < pa.min():
                return False
    return True


def _sample_roads(rng: np.random.Generator) -> tuple[Road, ...]:
    lanes = int(rng.choice([2, 2, 3, 4]))
    lane_w = float(rng.uniform(3.2, 3.8))
    heading = float(rng.normal(0.0, 0.12))
    ego_lane = int(rng.integers(0, lanes))
    t_ego = (ego_lane + 0.5) * lane_w - 0.5 * lanes * lane_w  # ego's offset left of the centre
    c, s = math.cos(heading), math.sin(heading)
    main = Road(s * t_ego, -c * t_ego, heading, lanes, lane_w, float(rng.uniform(2.0, 4.0)))
    roads = [main]
    if rng.random() < 0.45:
        along = float(rng.uniform(-35.0, 45.0))
        cross_heading = heading + math.pi / 2 + float(rng.normal(0.0, 0.1))
        cx, cy = main.world(along, 0.0)
        roads.append(
            Road(
                cx,
                cy,
                cross_heading,
                int(rng.choice([2, 3])),
                float(rng.uniform(3.0, 3.6)),
                float(rng.uniform(1.5, 3.5)),
            )
        )
    return tuple(roads)


def _size(rng: np.random.Generator, cls: int) -> tuple[float, float, float]:
    (w, l, h), spread = _SIZES[cls]
    f = np.clip(1.0 + spread * rng.standard_normal(3), 0.7, 1.4)
    if cls == 1:  # trucks vary mostly in length
        l = float(rng.uniform(6.0, 11.0))
    return float(w * f[0]), float(l * f[1]), float(h * f[2])


def _lane_offset(rng: np.random.Generator, road: Road) -> tuple[float, int]:
    """(lateral offset of a random lane's centre with jitter, m; lane index from the right)."""
    k = int(rng.integers(0, road.lanes))
    return (k + 0.5) * road.lane_width - road.half_width + float(rng.normal(0, 0.25)), k


def _candidates(rng: np.random.Generator, roads: tuple[Road, ...]) -> list[tuple[int, float, float, float]]:
    """Proposed (class, x, y, yaw) placements; overlaps are rejected later."""
    out: list[tuple[int, float, float, float]] = []
    for ri, road in enumerate(roads):
        scale = 1.0 if ri == 0 else 0.6
        hw = road.half_width

        def along() -> float:
            return float(rng.uniform(-_SCENE_EXTENT * 1.2, _SCENE_EXTENT * 1.2))

        for cls, mean in ((0, 11.0 * scale), (1, 2.0 * scale)):
            for _ in range(rng.poisson(mean)):
                s = along()
                if cls == 0 and rng.random() < 0.25:  # parked at the kerb
                    side = rng.choice([-1.0, 1.0])
                    t, forward = side * (hw - 1.2), side < 0
                else:
                    t, k = _lane_offset(rng, road)
                    forward = k < road.lanes / 2  # right-hand traffic: right lanes go along +heading
                yaw = road.heading + (0.0 if forward else math.pi) + float(rng.normal(0, 0.05))
                out.append((cls, *road.world(s, t), yaw))
        for _ in range(rng.poisson(9.0 * scale)):  # pedestrians on the sidewalks, a few crossing
            s = along()
            if rng.random() < 0.1:
                t = float(rng.uniform(-hw, hw))
            else:
                side = rng.choice([-1.0, 1.0])
                t = side * (hw + float(rng.uniform(0.4, max(0.5, road.sidewalk - 0.4))))
            out.append((2, *road.world(s, t), float(rng.uniform(-math.pi, math.pi))))
        for _ in range(rng.poisson(6.0 * scale)):  # pedestrian-sized clutter on the sidewalks
            side = rng.choice([-1.0, 1.0])
            t = side * (hw + float(rng.uniform(0.4, max(0.5, road.sidewalk - 0.4))))
            out.append((_SMALL_CLUTTER, *road.world(along(), t), float(rng.uniform(-math.pi, math.pi))))
        for _ in range(rng.poisson(2.5 * scale)):  # car-sized clutter at the kerb, where cars park
            side = rng.choice([-1.0, 1.0])
            yaw = road.heading + (math.pi if side > 0 else 0.0) + float(rng.normal(0, 0.05))
            out.append((_LARGE_CLUTTER, *road.world(along(), side * (hw - 1.2)), yaw))
        for _ in range(rng.poisson(0.8 * scale)):  # a run of barriers along a road edge
            s0, side = along(), rng.choice([-1.0, 1.0])
            t = side * (hw + float(rng.choice([-0.4, 0.3])))
            for k in range(int(rng.integers(3, 9))):
                out.append((3, *road.world(s0 + 2.5 * k, t), road.heading + float(rng.normal(0, 0.03))))
    return out


def _color(rng: np.random.Generator, cls: int) -> np.ndarray:
    """Body colour: cars vary widely, trucks lean to white/blue, pedestrians' clothes; barriers red;
    clutter is green street furniture (planters, bins; hedges, skips), a colour no labelled object
    has, so the cameras can tell it from its look-alike while LiDAR cannot."""
    if cls == _SMALL_CLUTTER:  # planters, bushes, green bins
        palette = np.array([[0.22, 0.55, 0.12], [0.1, 0.38, 0.14], [0.3, 0.6, 0.2]])
        base = palette[rng.integers(0, len(palette))]
    elif cls == _LARGE_CLUTTER:  # hedges, green skips
        palette = np.array([[0.18, 0.5, 0.12], [0.14, 0.4, 0.1], [0.1, 0.42, 0.2]])
        base = palette[rng.integers(0, len(palette))]
    elif cls == 0:
        palette = np.array(
            [
                [0.8, 0.1, 0.1],
                [0.1, 0.2, 0.7],
                [0.85, 0.85, 0.85],
                [0.15, 0.15, 0.15],
                [0.6, 0.6, 0.62],
                [0.9, 0.7, 0.1],
                [0.35, 0.3, 0.25],
            ]
        )
        base = palette[rng.integers(0, len(palette))]
    elif cls == 1:
        palette = np.array([[0.95, 0.95, 0.92], [0.2, 0.35, 0.6], [0.85, 0.45, 0.1]])
        base = palette[rng.integers(0, len(palette))]
    elif cls == 2:  # clothes of any colour but green, which is the street furniture's
        base = rng.uniform(0.1, 0.9, 3)
        base[1] = min(base[1], max(base[0], base[2]))
    else:
        base = np.array([0.9, 0.25, 0.1])
    return np.clip(base + rng.normal(0, 0.04, 3), 0.0, 1.0)


def sample_lighting(rng: np.random.Generator, night_prob: float) -> Lighting:
    night = bool(rng.random() < night_prob)
    if night:
        return Lighting(
            float(rng.uniform(0.2, 0.35)),
            float(rng.uniform(0.04, 0.07)),
            True,
            float(rng.uniform(-math.pi, math.pi)),
        )
    return Lighting(
        float(rng.uniform(0.75, 1.2)),
        float(rng.uniform(0.01, 0.03)),
        False,
        float(rng.uniform(-math.pi, math.pi)),
    )


def sample_scene(seed: int, night_prob: float = 0.25) -> Scene:
    """A random scene; the same seed always gives the same scene (numpy Generator only)."""
    rng = np.random.default_rng(seed)
    roads = _sample_roads(rng)
    lighting = sample_lighting(rng, night_prob)
    ego = np.array(
        [
            [_EGO_HALF[0], _EGO_HALF[1]],
            [-_EGO_HALF[0], _EGO_HALF[1]],
            [-_EGO_HALF[0], -_EGO_HALF[1]],
            [_EGO_HALF[0], -_EGO_HALF[1]],
        ]
    )
    placed: list[np.ndarray] = [ego]
    boxes, labels, colors, reflectivity = [], [], [], []
    for kind, x, y, yaw in _candidates(rng, roads):
        look_alike = _LOOK_ALIKE.get(kind, kind)
        w, l, h = _size(rng, look_alike)
        color = _color(rng, kind)
        reflect = _REFLECTIVITY[look_alike] * float(np.clip(1.0 + 0.1 * rng.standard_normal(), 0.7, 1.3))
        if max(abs(x), abs(y)) > _SCENE_EXTENT:
            continue
        box = np.array([x, y, h / 2, w, l, h, math.atan2(math.sin(yaw), math.cos(yaw))])
        quad = box_corners_bev(box[None])[0]
        grown = quad + 0.15 * np.sign(quad - box[:2])  # keep a small gap between objects
        if any(_overlaps(grown, q) for q in placed):
            continue
        placed.append(quad)
        boxes.append(box)
        labels.append(min(kind, CLUTTER))
        colors.append(color)
        reflectivity.append(reflect)
    return Scene(
        seed=seed,
        roads=roads,
        boxes=np.asarray(boxes, np.float64).reshape(-1, 7),
        labels=np.asarray(labels, np.int64),
        colors=np.asarray(colors, np.float64).reshape(-1, 3),
        reflectivity=np.asarray(reflectivity, np.float64),
        lighting=lighting,
    )
