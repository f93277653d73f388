"""sparsefuse: a deployment compiler for multimodal (camera + LiDAR) BEV perception models.

The subpackages map onto the top-level folders (DESIGN.md §2):
``sparsefuse.compiler`` -> compiler/, ``sparsefuse.passes`` -> passes/, and so on.
This root package holds only what every layer may import: the error family and atomic I/O.
"""

__version__ = "0.1.0"
