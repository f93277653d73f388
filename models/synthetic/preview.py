"""Preview PNGs of a frame: the camera views, the BEV with LiDAR points and boxes, the label masks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from sparsefuse.atomic import write_bytes
from sparsefuse.models.rig import Rig
from sparsefuse.models.synthetic.labels import BevGrid
from sparsefuse.models.synthetic.scene import CLASS_NAMES, SEG_CLASSES, box_corners_bev

CLASS_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return write_bytes(path, buf.getvalue())


def write_preview(
    frame: dict[str, np.ndarray],
    rig: Rig,
    grid: BevGrid,
    out_dir: str | Path,
    pred_boxes: np.ndarray | None = None,
    pred_labels: np.ndarray | None = None,
) -> list[Path]:
    """Write cameras.png, cam_<NAME>.png (one per camera), bev.png and labels.png; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    written = []
    images = frame["images"]
    fig, axes = plt.subplots(
        2, 3, figsize=(15, 15 * images.shape[2] / images.shape[3] * 2 / 3 + 0.8), dpi=100
    )
    order = [5, 0, 1, 4, 3, 2]  # FRONT_LEFT FRONT FRONT_RIGHT / BACK_LEFT BACK BACK_RIGHT (nuScenes layout)
    for ax, i in zip(axes.flat, order if len(rig.cameras) == 6 else range(len(rig.cameras)), strict=False):
        ax.imshow(images[i].transpose(1, 2, 0))
        ax.set_title(rig.cameras[i].name, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    written.append(_save(fig, out / "cameras.png"))
    plt.close(fig)
    for i, cam in enumerate(rig.cameras):
        buf = (images[i].transpose(1, 2, 0) * 255).round().astype(np.uint8)
        fig = plt.figure(figsize=(buf.shape[1] / 50, buf.shape[0] / 50), dpi=50)
        fig.figimage(buf)
        written.append(_save(fig, out / f"cam_{cam.name}.png"))
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 9), dpi=100)
    extent = (grid.xmin, grid.xmax, grid.ymin, grid.ymax)
    ax.imshow(frame["seg_masks"][0], origin="lower", extent=extent, cmap="Greys", vmin=0, vmax=3, alpha=0.8)
    pts = frame["points"]
    above = pts[:, 2] > 0.15  # returns from objects; the rest is ground
    ax.scatter(pts[~above, 0], pts[~above, 1], s=0.2, c="0.45")
    ax.scatter(pts[above, 0], pts[above, 1], s=1.5, c=pts[above, 2], cmap="autumn", vmin=0.0, vmax=3.5)
    for boxes, labels, style in (
        (frame["gt_boxes"], frame["gt_labels"], "-"),
        (pred_boxes, pred_labels, "--"),
    ):
        if boxes is None:
            continue
        for corners, cls in zip(box_corners_bev(np.asarray(boxes, np.float64)), labels, strict=True):
            ring = np.vstack([corners, corners[:1]])
            ax.plot(ring[:, 0], ring[:, 1], style, color=CLASS_COLOURS[int(cls)], lw=1.2)
            ax.plot(corners[[0, 3], 0].mean(), corners[[0, 3], 1].mean(), ".", color=CLASS_COLOURS[int(cls)])
    for cam in rig.cameras:
        t = cam.T_cam_to_ego
        ax.arrow(t[0, 3], t[1, 3], 4 * t[0, 2], 4 * t[1, 2], color="k", width=0.15)
    ax.legend(handles=_bev_legend(pred_boxes is not None), loc="upper right", fontsize=7, framealpha=0.85)
    ax.set_xlim(grid.xmin, grid.xmax)
    ax.set_ylim(grid.ymin, grid.ymax)
    ax.set_xlabel("x forward (m)")
    ax.set_ylabel("y left (m)")
    night = " (night)" if bool(frame["night"]) else ""
    ax.set_title(
        f"seed {int(frame['seed'])}{night}: {len(pts)} LiDAR points, "
        + ", ".join(f"{int((frame['gt_labels'] == k).sum())} {n}" for k, n in enumerate(CLASS_NAMES))
    )
    fig.tight_layout()
    written.append(_save(fig, out / "bev.png"))
    plt.close(fig)

    masks = frame["seg_masks"]
    fig, axes = plt.subplots(1, len(SEG_CLASSES), figsize=(4 * len(SEG_CLASSES), 4.3), dpi=100)
    for ax, mask, name in zip(axes, masks, SEG_CLASSES, strict=True):
        ax.imshow(mask, origin="lower", extent=extent, cmap="magma", vmin=0, vmax=1)
        ax.set_title(name)
    fig.tight_layout()
    written.append(_save(fig, out / "labels.png"))
    plt.close(fig)
    return written


def _bev_legend(with_predictions: bool) -> list:
    """What the BEV preview draws: drivable area, ground and object returns (coloured by height),
    ground-truth boxes per class (solid), predictions (dashed), camera axes."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(color="0.55", alpha=0.8, label="drivable area (seg mask)"),
        Line2D([], [], ls="", marker=".", color="0.45", label="ground returns"),
        Line2D([], [], ls="", marker="o", markersize=4, color="orange",
               label="object returns (colour: height)"),
    ]
    handles += [Line2D([], [], color=CLASS_COLOURS[k], label=f"{name} box")
                for k, name in enumerate(CLASS_NAMES)]
    if with_predictions:
        handles.append(Line2D([], [], color="k", ls="--", label="predicted box"))
    handles.append(Line2D([], [], color="k", marker=">", label="camera axis"))
    return handles

