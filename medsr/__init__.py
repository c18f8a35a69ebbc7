"""medsr: medical volumetric super-resolution.

Rebuilds isotropic volumes from anisotropic (thick-slice) scans and section series, with a
learned multi-image super-resolution GAN and linear / cubic B-spline baselines.

The public API is here: `upsample_volume`, `upsample_file`, `read_volume`, `write_volume`,
`Volume`, `MedsrError` and `__version__`. The names are loaded on first use (PEP 562), so that
``import medsr`` and ``medsr --help`` do not import torch. The layout of the package is described
in docs/architecture.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from medsr._version import __version__
from medsr.errors import MedsrError

#: public name -> the module that defines it
_LAZY = {
    "upsample_volume": "medsr.upsample.api",
    "upsample_file": "medsr.upsample.files",
    "read_volume": "medsr.io",
    "write_volume": "medsr.io",
    "Volume": "medsr.io",
}

__all__ = ["MedsrError", "Volume", "__version__", "read_volume", "upsample_file"]
__all__ += ["upsample_volume", "write_volume"]

if TYPE_CHECKING:
    from medsr.io import Volume, read_volume, write_volume
    from medsr.upsample.api import upsample_volume
    from medsr.upsample.files import upsample_file


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medsr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
