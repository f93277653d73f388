"""Conversion of bev_pool modules / functions into sparsefuse ops (stub: filled in by its owner)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsefuse.passes.convert.base import ConversionRow, ConvertContext


@dataclass(frozen=True)
class _Converter:
    library: str = "bev_pool"
    supported: tuple[str, ...] = ()

    def convert(self, model: torch.nn.Module, ctx: ConvertContext) -> list[ConversionRow]:
        return []


CONVERTER = _Converter()
