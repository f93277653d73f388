"""Maps the top-level folders onto the `sparsefuse` import namespace (docs/design.md §2)."""

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
TOP_LEVEL = ("compiler", "passes", "plugins", "targets", "models")


def _discover() -> tuple[list[str], dict[str, str]]:
    packages = ["sparsefuse"]
    package_dir = {"sparsefuse": "sparsefuse"}
    for top in TOP_LEVEL:
        for init in sorted((ROOT / top).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT)
            name = "sparsefuse." + ".".join(rel.parts)
            packages.append(name)
            package_dir[name] = rel.as_posix()
    return packages, package_dir


packages, package_dir = _discover()
setup(packages=packages, package_dir=package_dir)
