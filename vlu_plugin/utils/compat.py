"""The one shim without which BasicSR 1.4.2 cannot be imported on current torchvision.

`install_import_shims()` must run before anything imports `basicsr`; `vlu_plugin/__init__.py` calls it first
thing. Nothing else of BasicSR is changed on import: the process-level fixes are `vlu_plugin.patch_basicsr()`
(`vlu_plugin.utils.patches`), the model-level ones `vlu_plugin.models.base.PluginModelMixin`.
"""
import importlib
import sys


def install_import_shims():
    """Alias torchvision.transforms.functional_tensor (removed in torchvision 0.17) if it is missing."""
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
    except ImportError:
        # basicsr 1.4.2 only imports rgb_to_grayscale from it, which lives in `functional` now.
        import torchvision.transforms.functional as functional
        sys.modules[name] = functional
