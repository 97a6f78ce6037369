"""Scoring a composite-degradation (CDD-11) CLIP as a multi-label classifier, for `vlu report`.

The CLIP picks one of the 11 subsets (see tasks.py for why); each pick also says which atomic degradations
(low light, haze, rain, snow) it believes present. Beside the exact subset accuracy, the report gives each
atomic degradation's accuracy (present/absent right) and the images whose every component was found.
"""
import numpy as np

from vlu_plugin.data.tasks import ATOMIC, ATOMIC_WORDS, CDD11_TASKS

COMPONENTS = {task.label: set(task.components) for task in CDD11_TASKS}


def atomic_accuracy(pairs):
    """{atomic degradation: share of images where its presence was predicted right} over (label, predicted)."""
    return {a: float(np.mean([(a in COMPONENTS.get(label, ())) == (a in COMPONENTS.get(predicted, ()))
                              for label, predicted in pairs])) for a in ATOMIC}


def clip_lines(exact, per_class, pairs):
    """The report's paragraph on a CDD-11 degradation CLIP: subset accuracy, atomic accuracies, per subset."""
    atomic = atomic_accuracy(pairs)
    names = {task.label: task.name[len('cdd11_'):] for task in CDD11_TASKS}
    subsets = ', '.join(f'{names.get(label, label)} {value:.2f}' for label, value in per_class.items())
    found = ', '.join(f'{ATOMIC_WORDS[a]} {v:.3f}' for a, v in atomic.items())
    return [f'Degradation CLIP on {len(pairs)} CDD-11 test images: exact {len(CDD11_TASKS)}-subset accuracy '
            f'{exact:.3f}; per atomic degradation (present or absent, right): {found}. Per subset: {subsets}.', '']
