"""VLU-Net and the all-in-one baselines as a BasicSR plugin.

Importing this package registers its architectures, models, datasets, losses and metrics into BasicSR's
registries, and installs the one shim BasicSR 1.4.2 needs to import on current torchvision (import it
before `basicsr`). It changes nothing else in BasicSR: `patch_basicsr()` applies the plugin's fixes to
BasicSR's train/test pipelines (the `vlu` commands call it; see vlu_plugin.utils.patches).
"""
from vlu_plugin.utils.compat import install_import_shims

install_import_shims()

from vlu_plugin import archs, data, losses, metrics, models  # noqa: E402,F401  (registration side effects)
from vlu_plugin.utils.patches import patch_basicsr  # noqa: E402,F401

__version__ = '0.1.0'
