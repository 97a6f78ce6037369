"""Registration by import, as BasicSR does for its own folders."""
import importlib
import pkgutil


def import_modules_with_suffix(package_name, package_path, suffix):
    """Import `package_name.<m>` for every module <m> in `package_path` whose name ends with `suffix`."""
    names = sorted(m.name for m in pkgutil.iter_modules(package_path) if m.name.endswith(suffix))
    return [importlib.import_module(f'{package_name}.{name}') for name in names]
