"""medsr: medical volumetric super-resolution.

Rebuilds isotropic volumes from anisotropic (thick-slice) scans and section series, with a
learned multi-image super-resolution GAN and linear / cubic B-spline baselines.
"""

from medsr.errors import MedsrError

__version__ = "0.1.0"

__all__ = ["MedsrError", "__version__"]
