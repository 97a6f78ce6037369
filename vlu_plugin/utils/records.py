"""The validation records of a run, in one definition for the models that write them and the report that reads them.

In `experiments/<name>` (training) or `results/<name>` (testing):
- `metrics.csv`: iter, dataset, metric, value (one row per metric, set and validation; a test run's iter
  is the run's name, as BasicSR passes it);
- `degradation_predictions.csv`: iter, dataset, image, label, predicted (one row per image a degradation
  classifier saw);
- `run.json`: what produced them (name, model_type, network, variant).
The degradation classifier's accuracy is the metric `degradation_acc`.
"""
import csv
import json
import math
import os
import os.path as osp

from vlu_plugin.utils.errors import UserError
from vlu_plugin.utils.atomic import atomic_write

METRICS = 'metrics.csv'
METRICS_COLUMNS = ('iter', 'dataset', 'metric', 'value')
PREDICTIONS = 'degradation_predictions.csv'
PREDICTIONS_COLUMNS = ('iter', 'dataset', 'image', 'label', 'predicted')
RUN_INFO = 'run.json'
ACCURACY_METRIC = 'degradation_acc'


def _append(path, header, rows):
    """Append rows to a CSV file, writing the header when the file is new."""
    new = not osp.exists(path)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'a', newline='') as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(header)
        writer.writerows(rows)


def append_metrics(folder, current_iter, dataset, values):
    """Record {metric: value} of one validation of `dataset` (NaN values are left out)."""
    _append(osp.join(folder, METRICS), METRICS_COLUMNS,
            [(current_iter, dataset, name, f'{value:.6f}') for name, value in values.items() if not math.isnan(value)])


def append_predictions(folder, rows):
    """Record (iter, dataset, image, label, predicted) rows of a degradation classifier."""
    if rows:
        _append(osp.join(folder, PREDICTIONS), PREDICTIONS_COLUMNS, rows)


def write_run_info(folder, info):
    """Write run.json (once: the first validation of a run names it)."""
    path = osp.join(folder, RUN_INFO)
    if not osp.exists(path):
        atomic_write(path, json.dumps(info))


def iteration(value):
    """A record's iteration: its number during training, +inf for a test run (BasicSR passes the run's name)."""
    return int(value) if str(value).lstrip('-').isdigit() else math.inf


def read_csv(path, columns=()):
    """The rows of the CSV at `path` ([] when absent); UserError, naming the file, for a binary or malformed one."""
    if not osp.isfile(path):
        return []
    try:
        with open(path, newline='', encoding='utf-8') as f:
            reader = csv.DictReader(f)
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise UserError(f'{path}: not a readable CSV file ({type(error).__name__})') from None
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise UserError(f'{path}: expected the columns {",".join(columns)}, the header is '
                        f'{",".join(reader.fieldnames or []) or "empty"}')
    return rows


def read_metrics(folder):
    """The rows of `folder`'s metrics.csv (dicts keyed by METRICS_COLUMNS)."""
    return read_csv(osp.join(folder, METRICS), METRICS_COLUMNS)


def read_predictions(folder):
    """The rows of `folder`'s degradation_predictions.csv."""
    return read_csv(osp.join(folder, PREDICTIONS), PREDICTIONS_COLUMNS)


def read_run_info(folder):
    """The mapping in `folder`'s run.json ({} when absent); UserError, naming the file, when corrupt."""
    path = osp.join(folder, RUN_INFO)
    if not osp.isfile(path):
        return {}
    try:
        with open(path, encoding='utf-8') as f:
            info = json.load(f)
    except (UnicodeDecodeError, ValueError) as error:
        raise UserError(f'{path}: not valid JSON ({error})') from None
    if not isinstance(info, dict):
        raise UserError(f'{path}: expected a JSON object, got {type(info).__name__}')
    return info
