"""Imports every `*_arch.py` module here so its classes register in BasicSR's registry."""
from vlu_plugin.utils.registration import import_modules_with_suffix

import_modules_with_suffix(__name__, __path__, '_arch')
