"""VLU-Net and the all-in-one baselines as a BasicSR plugin.

Importing this package registers its architectures, models, datasets, losses and metrics into
BasicSR's registries. Import it before `basicsr`: it first installs the shims BasicSR 1.4.2 needs
on current torchvision.
"""
from vlu_plugin.compat import install_import_shims, patch_basicsr

install_import_shims()
patch_basicsr()

from vlu_plugin import archs, data, losses, metrics, models  # noqa: E402,F401  (registration side effects)

__version__ = '0.1.0'
