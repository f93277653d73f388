"""Hard voxelization -> ``sparsefuse::voxelize_with_counts`` (ONNX Voxelize with its 4th output).

- spconv 2.x ``spconv.pytorch.utils.PointToVoxel``: a plain object (not an nn.Module) held as an
  attribute of some module of the model, called as ``voxels, coords_zyx, num_points = gen(points)``.
  Every such attribute is replaced by :class:`PointToVoxel`, an nn.Module with the same call and
  outputs (voxels [V,P,F] f32 zero-padded, coords [V,3] i32 (z, y, x), num_points [V] i32).
- mmcv / mmdet3d-style hard voxelization modules (class ``Voxelization`` / ``HardVoxelization`` with
  ``voxel_size``, ``point_cloud_range``, ``max_num_points``, ``max_voxels``; ``forward(points)``
  returns (voxels [V,P,F], coors [V,3] zyx, num_points [V])) -> :class:`HardVoxelization`.
  ``max_voxels`` may be a (train, test) pair: the converted (eval) model uses the test value.
  ``max_num_points == -1`` is dynamic voxelization, which has no fixed-size output: refused.

Semantics (both libraries, verified against spconv 2.3.8's CPU source and outputs): a point's voxel is
floor((p - min) / size) in float32; voxels are numbered by their first point in input order and only
the first ``max_voxels`` survive; each keeps its first P points (input order). That is Voxelize with
``order="arrival"``, ``reduce="none"``, ``max_points_per_voxel=P``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import sparsefuse.plugins  # noqa: F401  (registers torch.ops.sparsefuse.*)
from sparsefuse.errors import SparsefuseError
from sparsefuse.passes.convert.base import ConversionRow, ConvertContext, qualified_type
from sparsefuse.plugins.voxelize import grid_shape

POINT_TO_VOXEL_TYPE = "spconv.pytorch.utils.PointToVoxel"
HARD_VOXELIZATION_NAMES = ("Voxelization", "HardVoxelization")
HARD_VOXELIZATION_ATTRS = ("voxel_size", "point_cloud_range", "max_num_points", "max_voxels")


def _floats(values: Any, count: int, what: str, path: str) -> list[float]:
    """``values`` (list / tuple / tensor) as ``count`` Python floats, else SparsefuseError."""
    out = [float(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]
    if len(out) != count:
        raise SparsefuseError(f"{path}: {what} has {len(out)} values, expected {count}",
                              "sparsefuse voxelizes 3-D points (x, y, z)")
    return out


def _check_grid(path: str, point_range: list[float], voxel_size: list[float],
                theirs_zyx: Sequence[int]) -> None:
    """The library's float32 grid size must equal ours (round((max - min) / size) in double)."""
    ours = list(grid_shape(point_range, voxel_size))
    if [int(v) for v in theirs_zyx] != ours:
        raise SparsefuseError(
            f"{path}: grid (z, y, x) {list(theirs_zyx)} rounds differently from sparsefuse's {ours}",
            "make (max - min) / voxel_size an integer on every axis",
        )


class _HardVoxelizer(nn.Module):
    """Voxelize(order="arrival", reduce="none") with the counts; subclasses add the library's call."""

    def __init__(self, point_range: list[float], voxel_size: list[float], max_voxels: int, max_points: int,
                 num_features: int | None, source: str) -> None:
        super().__init__()
        self.point_range = list(point_range)
        self.voxel_size = list(voxel_size)
        self.max_voxels = int(max_voxels)
        self.max_points = int(max_points)
        self.num_features = num_features
        self.source = source

    def voxelize(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """points [N,F] f32 -> voxels [V,P,F], coords [V,3] i32 (z, y, x), num_points [V] i32."""
        if points.dim() != 2 or points.shape[1] < 3:
            raise SparsefuseError(f"{self.source}: points must be [N, >=3], got {tuple(points.shape)}",
                                  "pass one point cloud (x, y, z, ...) per call")
        if self.num_features is not None and points.shape[1] != self.num_features:
            raise SparsefuseError(
                f"{self.source}: points have {points.shape[1]} features, the voxelizer was built for "
                f"{self.num_features}", "spconv PointToVoxel needs exactly num_point_features columns")
        if points.dtype != torch.float32:
            raise SparsefuseError(f"{self.source}: points are {points.dtype}, expected float32",
                                  "cast the points to float32 before voxelization (binning is float32)")
        voxels, coords, _, counts = torch.ops.sparsefuse.voxelize_with_counts(
            points, self.point_range, self.voxel_size, self.max_voxels, self.max_points, "none", "arrival")
        return voxels, coords[:, 1:], counts

    def target(self) -> str:
        return (f"Voxelize(max_voxels={self.max_voxels}, max_points_per_voxel={self.max_points}, "
                f'reduce="none", order="arrival") + num_points_per_voxel')

    def extra_repr(self) -> str:
        return (f"point_range={self.point_range}, voxel_size={self.voxel_size}, "
                f"max_voxels={self.max_voxels}, max_points={self.max_points}")


class PointToVoxel(_HardVoxelizer):
    """spconv ``PointToVoxel`` as a module: ``(pc, clear_voxels=True, empty_mean=False)`` ->
    (voxels [V,P,F] f32, coords [V,3] i32 zyx, num_points [V] i32)."""

    def forward(self, pc: torch.Tensor, clear_voxels: bool = True, empty_mean: bool = False):
        if empty_mean:
            # spconv 2.3.8's CPU kernel does not reset its mean accumulator between voxels, so its
            # padding is not a per-voxel mean: there is no numerics to reproduce.
            raise SparsefuseError(f"{self.source}: PointToVoxel(..., empty_mean=True) is not supported",
                                  "call it with empty_mean=False and pad in the model (e.g. the mean VFE)")
        if not clear_voxels:
            raise SparsefuseError(f"{self.source}: PointToVoxel(..., clear_voxels=False) keeps state across "
                                  "calls", "call it with clear_voxels=True (the default)")
        return self.voxelize(pc)

    def generate_voxel_with_id(self, pc: torch.Tensor, clear_voxels: bool = True, empty_mean: bool = False):
        raise SparsefuseError(
            f"{self.source}: PointToVoxel.generate_voxel_with_id (per-point voxel ids) is not supported",
            "call the generator itself: voxels, coords, num_points = gen(pc)")


class HardVoxelization(_HardVoxelizer):
    """mmcv / mmdet3d hard ``Voxelization`` as ours: ``forward(points)`` -> (voxels [V,P,F],
    coors [V,3] i32 zyx, num_points [V] i32)."""

    def forward(self, input: torch.Tensor):  # noqa: A002  (mmcv's argument name)
        return self.voxelize(input)


def _point_to_voxel_class() -> type | None:
    try:
        from spconv.pytorch.utils import PointToVoxel as SpconvPointToVoxel
    except ImportError:  # pragma: no cover - exercised only without spconv
        return None
    return SpconvPointToVoxel


def _from_point_to_voxel(gen: Any, path: str) -> PointToVoxel:
    """Our module for one spconv PointToVoxel object (attributes as its __init__ stores them)."""
    vsize_zyx = list(gen.vsize)
    if len(vsize_zyx) != 3:
        raise SparsefuseError(f"{path}: PointToVoxel is {len(vsize_zyx)}-D", "only 3-D voxelization converts")
    if getattr(gen.device, "type", "cpu") != "cpu":
        raise SparsefuseError(
            f"{path}: PointToVoxel was built for device {gen.device}; spconv's CUDA path orders voxels by "
            "its hash table, not by arrival", "build the PointToVoxel on the CPU for conversion")
    range_zyx = list(gen.coors_range)
    voxel_size = vsize_zyx[::-1]
    point_range = range_zyx[:3][::-1] + range_zyx[3:][::-1]
    _check_grid(path, point_range, voxel_size, gen.grid_size)
    return PointToVoxel(point_range, voxel_size, int(gen.max_num_voxels), int(gen.max_num_points_per_voxel),
                        int(gen.num_point_features), path)


def is_hard_voxelization(module: nn.Module) -> bool:
    """mmcv / mmdet3d-style hard voxelization module (by class name and attributes), not ours."""
    return (type(module).__name__ in HARD_VOXELIZATION_NAMES
            and not type(module).__module__.startswith("sparsefuse.")
            and all(hasattr(module, a) for a in HARD_VOXELIZATION_ATTRS))


def _from_hard_voxelization(module: nn.Module, path: str) -> HardVoxelization:
    """Our module for an mmcv-style Voxelization (eval: the test value of a (train, test) max_voxels)."""
    max_points = int(module.max_num_points)
    if max_points == -1:
        raise SparsefuseError(
            f"module {path or '(root)'} ({qualified_type(module)}) is dynamic voxelization "
            "(max_num_points=-1)",
            "dynamic voxelization has no fixed-size voxel output; use hard voxelization (max_num_points > 0) "
            "or a mean VFE with Voxelize's reduce='mean'")
    if max_points <= 0:
        raise SparsefuseError(f"module {path or '(root)'}: max_num_points={max_points}",
                              "use max_num_points > 0")
    max_voxels = module.max_voxels
    if isinstance(max_voxels, list | tuple):
        max_voxels = max_voxels[1] if len(max_voxels) > 1 else max_voxels[0]
    if int(max_voxels) <= 0:
        raise SparsefuseError(f"module {path or '(root)'}: max_voxels={max_voxels}", "use max_voxels > 0")
    point_range = _floats(module.point_cloud_range, 6, "point_cloud_range", path)
    voxel_size = _floats(module.voxel_size, 3, "voxel_size", path)
    # mmcv computes its grid from float32 tensors: compare that rounding with ours.
    lo, hi = torch.tensor(point_range[:3]), torch.tensor(point_range[3:])
    grid_xyz = torch.round((hi - lo) / torch.tensor(voxel_size)).long().tolist()
    _check_grid(path, point_range, voxel_size, grid_xyz[::-1])
    return HardVoxelization(point_range, voxel_size, int(max_voxels), max_points, None, path or "(root)")


def _set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, name, new)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


@dataclass(frozen=True)
class _Converter:
    library: str = "voxelization"
    supported: tuple[str, ...] = ("PointToVoxel (spconv)", "Voxelization / HardVoxelization (mmcv-style)")

    def convert(self, model: nn.Module, ctx: ConvertContext) -> list[ConversionRow]:
        """Replace, in place, every PointToVoxel attribute and hard voxelization module."""
        rows: list[ConversionRow] = []
        if is_hard_voxelization(model):
            raise SparsefuseError("the model itself is a voxelization module",
                                  "convert the model that calls it")
        for path, module in list(model.named_modules()):
            if is_hard_voxelization(module):
                ours = _from_hard_voxelization(module, path)
                _set_module(model, path, ours)
                rows.append(ConversionRow(path, qualified_type(module), ours.target(),
                                          "hard voxelization, eval max_voxels"))
        rows += self._point_to_voxel(model)
        return rows

    def _point_to_voxel(self, model: nn.Module) -> list[ConversionRow]:
        cls = _point_to_voxel_class()
        if cls is None:
            return []
        rows: list[ConversionRow] = []
        made: dict[int, PointToVoxel] = {}  # one module per generator object, even if shared
        for owner_path, owner in list(model.named_modules()):
            for name, value in list(vars(owner).items()):
                if not isinstance(value, cls):
                    continue
                path = _join(owner_path, name)
                ours = made.get(id(value))
                if ours is None:
                    ours = made[id(value)] = _from_point_to_voxel(value, path)
                setattr(owner, name, ours)  # nn.Module.__setattr__: leaves __dict__, becomes a submodule
                rows.append(ConversionRow(path, POINT_TO_VOXEL_TYPE, ours.target(),
                                          "attribute -> submodule; spconv CPU semantics"))
        return rows


CONVERTER = _Converter()
