"""Metrics BasicSR lacks, registered in METRIC_REGISTRY (BasicSR does not scan metric folders)."""
from vlu_plugin.utils.registration import import_modules_with_suffix

import_modules_with_suffix(__name__, __path__, '_metric')
