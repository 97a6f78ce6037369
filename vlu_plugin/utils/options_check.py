"""Option files: read safely, and checked in one pass before anything is built.

`load_option_file(path)` reads YAML with the plugin's safe loader (no `!!python/...` tags, `!include`,
ordered mappings) and says in one sentence why a file is no option file (missing, empty, binary, a list).
`apply_force_yml(opt, entries, path)` checks BasicSR's `--force_yml a:b=value` entries against the file.
`validate_options(opt, path, phase)` checks every value BasicSR would otherwise trip over mid-run
(a name that escapes experiments/, a zero frequency, a learning rate that is no number, CUDA that is not
there) and converts numbers YAML reads as strings (`lr: 1e-3` is a string to YAML 1.1, a number to
BasicSR users). All raise `UserError` naming the file and the option.
Every run leaves `options_resolved.yml` in its experiment or result folder (`write_resolved_options`): the
options as the run read them, `!include`s expanded, plain YAML; `run_option_file(folder)` finds the copy a
reader should use (BasicSR's verbatim copy keeps `!include` paths relative to where the file came from).
"""
import math
import os
import os.path as osp
import re

from vlu_plugin.utils.errors import UserError
from vlu_plugin.utils.hints import did_you_mean

# YAML 1.1 reads `1e-3` (no dot) as a string; these are the spellings of a number it leaves as text
_NUMBER = re.compile(r'^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$')


def _deep_update(base, override):
    """`base` with `override`'s keys set recursively (nested mappings merged, other values replaced)."""
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def _include(loader, node):
    """`!include path` or `!include {file: path, override: {...}, remove: [keys]}`: a YAML file relative to
    the including one.

    The long form changes a few keys of the shared block (e.g. AirNet's `train: {key_view: true}`) or
    drops some (a test file drops `train`), so one data block serves every model and every stage.
    """
    import yaml
    import yaml.nodes
    including = getattr(loader, 'name', '')
    if isinstance(node, yaml.nodes.MappingNode):
        spec = loader.construct_mapping(node, deep=True)
        relative, override, remove = spec.get('file'), spec.get('override') or {}, spec.get('remove') or []
        if not relative or set(spec) - {'file', 'override', 'remove'}:
            raise ValueError(f'{including}: !include takes a path or {{file: path, override: {{...}}, remove: [...]}}'
                             f', got {dict(spec)}')
    else:
        relative, override, remove = loader.construct_scalar(node), {}, []
    path = osp.join(osp.dirname(including), relative) if osp.isfile(including) else relative
    if not osp.isfile(path):
        raise FileNotFoundError(f'{including}: !include {relative}: no such file ({path})')
    with open(path) as f:
        block = _deep_update(yaml.load(f, Loader=type(loader)), override)
    for key in remove:
        if key not in block:
            raise KeyError(f'{including}: !include {relative}: cannot remove {key!r}, it has only {list(block)}')
        del block[key]
    return block


_OPTION_LOADER = None


def option_loader():
    """The YAML loader of option files: PyYAML's safe loader (no Python tags, so no code runs), ordered
    mappings as BasicSR's, and `!include`."""
    global _OPTION_LOADER
    if _OPTION_LOADER is None:
        from collections import OrderedDict

        import yaml

        class OptionLoader(yaml.SafeLoader):
            """PyYAML's safe loader with ordered mappings (as BasicSR's) and `!include`."""

        OptionLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                     lambda loader, node: OrderedDict(loader.construct_pairs(node)))
        OptionLoader.add_constructor('!include', _include)
        _OPTION_LOADER = OptionLoader
    return _OPTION_LOADER


def load_option_file(path):
    """The option mapping in `path`, read with the safe loader; UserError when it is no option file."""
    import yaml
    if osp.isdir(path):
        raise UserError(f'{path}: is a folder, not an option file (.yml)')
    if not osp.isfile(path):
        raise UserError(f'{path}: no such option file')
    with open(path, 'rb') as f:
        content = f.read()
    try:
        text = content.decode('utf-8')
    except UnicodeDecodeError:
        text = None
    if text is None or '\0' in text:  # an image, a checkpoint, ... handed to -opt
        raise UserError(f'{path}: not a text file; an option file is YAML text (UTF-8)')
    try:
        with open(path, encoding='utf-8') as f:
            opt = yaml.load(f, Loader=option_loader())
    except yaml.constructor.ConstructorError as error:
        tag = getattr(error, 'problem', '') or ''
        where = f' (line {error.problem_mark.line + 1})' if error.problem_mark else ''
        if 'python/' in tag:
            shown = tag.split('tag ')[-1].strip("'").replace('tag:yaml.org,2002:', '!!')
            raise UserError(f'{path}{where}: refusing the Python tag {shown}: option files hold plain values only '
                            '(a Python tag could run code)') from None
        raise UserError(f'{path}{where}: {tag}') from None
    except yaml.YAMLError as error:
        raise UserError(f'{path}: not valid YAML: {" ".join(str(error).split())}') from None
    except (FileNotFoundError, KeyError) as error:  # a broken `!include`: its message names both files
        raise UserError(error.args[0] if error.args else str(error)) from None
    if opt is None:
        raise UserError(f'{path}: the option file is empty')
    if not isinstance(opt, dict):
        raise UserError(f'{path}: expected a mapping of options (`key: value` lines), got a YAML '
                        f'{"list" if isinstance(opt, list) else type(opt).__name__}')
    return opt


RESOLVED_OPTIONS = 'options_resolved.yml'


def plain(value):
    """Nested mappings and lists as plain dicts and lists (yaml.safe_dump refuses OrderedDict)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def write_resolved_options(opt, folder, source=None):
    """Write `opt` as plain YAML to `<folder>/options_resolved.yml` (atomically); returns the path."""
    import yaml

    from vlu_plugin.utils.atomic import atomic_write
    header = f'# the options of this run, !include expanded{f" (from {source})" if source else ""}\n'
    return atomic_write(osp.join(folder, RESOLVED_OPTIONS), header + yaml.safe_dump(plain(opt), sort_keys=False))


def run_option_file(folder):
    """The option file to read for the run in `folder`: its `options_resolved.yml`, else the one `*.yml` there
    (folders of runs older than the resolved copy); None when there is none. UserError when several are left."""
    resolved = osp.join(folder, RESOLVED_OPTIONS)
    if osp.isfile(resolved):
        return resolved
    ymls = sorted(osp.join(folder, name) for name in os.listdir(folder) if name.endswith('.yml'))
    if not ymls:
        return None
    if len(ymls) > 1:
        raise UserError(f'{folder}: {len(ymls)} option files ({", ".join(osp.basename(y) for y in ymls)}) and no '
                        f'{RESOLVED_OPTIONS}; name the option file instead of the folder')
    return ymls[0]


def apply_force_yml(opt, entries, path):
    """Apply BasicSR's `--force_yml key:sub=value` entries to `opt`, refusing malformed or unknown keys."""
    from basicsr.utils.options import _postprocess_yml_value
    for entry in entries or ():
        if entry.count('=') != 1:
            raise UserError(f'--force_yml {entry}: expected KEY:SUBKEY=VALUE (one "=")')
        keys, value = (part.strip() for part in entry.split('='))
        node, walked = opt, []
        keys = keys.split(':')
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                known = list(node) if isinstance(node, dict) else []
                where = ':'.join(walked) or 'the top level'
                raise UserError(f'--force_yml {entry}: {path} has no option {":".join(walked + [key])} '
                                f'(--force_yml changes existing options only){did_you_mean(key, known)}; '
                                f'options at {where}: {", ".join(map(str, known)) or "none"}')
            walked.append(key)
            parent, node = node, node[key]
        parent[keys[-1]] = _postprocess_yml_value(value)
    return opt


class _Checker:
    """Checks values of one option file; every message starts with the file and the option's dotted name."""

    def __init__(self, opt, path):
        self.opt, self.path = opt, path

    def fail(self, where, what):
        """Raise the UserError `<file>: <option>: <what is wrong>`."""
        raise UserError(f'{self.path}: {where}: {what}')

    def block(self, parent, key, where, required=True):
        """The mapping `parent[key]` ({} when absent and optional)."""
        value = parent.get(key)
        if value is None:
            if required:
                self.fail(where, 'missing (required)')
            return {}
        if not isinstance(value, dict):
            self.fail(where, f'expected a mapping, got {value!r}')
        return value

    def number(self, parent, key, where, integer=False, minimum=None, above=None, required=False):
        """`parent[key]` as a number (numeric strings converted in place); None when absent and optional."""
        value = parent.get(key)
        if value is None:
            if required:
                self.fail(where, 'missing (required)')
            return None
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(where, f'{parent.get(key)!r} is not a number')
        if integer:
            if value != int(value):
                self.fail(where, f'{parent.get(key)!r} is not a whole number')
            value = int(value)
        if minimum is not None and value < minimum:
            self.fail(where, f'{value} is below the smallest allowed value, {minimum}')
        if above is not None and value <= above:
            self.fail(where, f'{value} must be greater than {above}')
        parent[key] = value
        return value

    def numbers_in(self, block, where):
        """Convert the numeric strings of an optimizer/scheduler block (lr, weight_decay, betas, eta_min...)."""
        for key, value in block.items():
            if key == 'type':
                continue
            if isinstance(value, str):
                if _NUMBER.match(value.strip()):
                    block[key] = float(value)
                elif key in ('lr', 'weight_decay', 'eps', 'eta_min', 'gamma', 'momentum'):
                    self.fail(f'{where}.{key}', f'{value!r} is not a number')
            elif isinstance(value, list):
                block[key] = [float(v) if isinstance(v, str) and _NUMBER.match(v.strip()) else v for v in value]


def check_name(name, path, key='name'):
    """A `name:` must be one plain folder name: it becomes experiments/<name> or results/<name>."""
    if not isinstance(name, str) or not name.strip():
        raise UserError(f'{path}: {key}: expected a folder name, got {name!r}')
    if (name in ('.', '..') or '/' in name or '\\' in name or '\0' in name or osp.isabs(name)
            or name != name.strip()):
        raise UserError(f'{path}: {key}: {name!r} is not a plain folder name (no "/", "..", absolute paths or '
                        'surrounding spaces): it becomes experiments/<name> or results/<name>')


def _check_num_gpu(c, opt):
    value = opt.get('num_gpu')
    if value is None:
        c.fail('num_gpu', "missing (required): 'auto', 0 for the CPU, or a GPU count")
    if value == 'auto':
        return
    gpus = c.number(opt, 'num_gpu', 'num_gpu', integer=True, minimum=0)
    if gpus > 0:
        import torch
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus > available:
            c.fail('num_gpu', f'{gpus} GPUs asked for, {available} available'
                   + ('' if available else " (CUDA is not available here; use 0 or 'auto' for the CPU)"))


def _check_datasets(c, opt, phase):
    datasets = c.block(opt, 'datasets', 'datasets')
    if phase == 'train' and 'train' not in datasets:
        c.fail('datasets.train', f'missing: a training run needs a train set (found: {", ".join(datasets) or "none"})')
    allowed = ('train', 'val') if phase == 'train' else ('test', 'val')
    for key, block in datasets.items():
        where = f'datasets.{key}'
        if str(key).split('_')[0] not in allowed:
            c.fail(where, f'unknown phase {str(key).split("_")[0]!r}; {phase} runs take '
                   + ', '.join(f'{a} / {a}_<n>' for a in allowed))
        block = c.block(datasets, key, where)
        if not block.get('type'):
            c.fail(f'{where}.type', 'missing (required): the dataset class, e.g. MultiDegradationDataset')
        if key == 'train':
            c.number(block, 'batch_size_per_gpu', f'{where}.batch_size_per_gpu', integer=True, minimum=1,
                     required=True)
            c.number(block, 'num_worker_per_gpu', f'{where}.num_worker_per_gpu', integer=True, minimum=0)
            c.number(block, 'dataset_enlarge_ratio', f'{where}.dataset_enlarge_ratio', above=0)


def _check_scheduler(c, train, total_iter):
    scheduler = c.block(train, 'scheduler', 'train.scheduler', required=False)
    c.numbers_in(scheduler, 'train.scheduler')
    if scheduler.get('type') == 'CosineAnnealingRestartLR':
        periods = scheduler.get('periods')
        if not isinstance(periods, list) or not periods or not all(
                isinstance(p, (int, float)) and not isinstance(p, bool) and p > 0 for p in periods):
            c.fail('train.scheduler.periods', f'expected a list of positive iteration counts, got {periods!r}')
        scheduler['periods'] = [int(p) for p in periods]
        if total_iter is not None and sum(periods) < total_iter:
            c.fail('train.scheduler.periods', f'they cover {int(sum(periods))} iterations, fewer than train.total_iter '
                   f'{total_iter} (the cosine schedule is undefined past its periods); lengthen the periods')


def _check_metric_protocols(c, opt):
    """A misspelled `val.metrics.<m>.protocol` fails now, not at the first validation hours later."""
    from vlu_plugin.metrics.protocols import PROTOCOLS
    metrics = (opt.get('val') or {}).get('metrics') if isinstance(opt.get('val'), dict) else None
    for key, metric in (metrics or {}).items() if isinstance(metrics, dict) else ():
        name = metric.get('protocol') if isinstance(metric, dict) else None
        if name is not None and name not in PROTOCOLS:
            c.fail(f'val.metrics.{key}.protocol', f'unknown metric protocol {name!r}; known: {", ".join(PROTOCOLS)}')


def validate_options(opt, path, phase='train'):
    """Check `opt` (from `path`) for a `phase` run ('train', 'test' or 'restore'); returns it, numbers converted.

    Raises UserError naming the file and the first bad option.
    """
    if not isinstance(opt, dict):
        raise UserError(f'{path}: expected a mapping of options, got {type(opt).__name__}')
    c = _Checker(opt, path)
    if not opt.get('model_type'):
        c.fail('model_type', 'missing (required): e.g. VLUNetModel, AllInOneModel')
    if phase == 'restore':
        return opt
    check_name(opt.get('name'), path)
    _check_num_gpu(c, opt)
    seed = opt.get('manual_seed')
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        c.fail('manual_seed', f'{seed!r} is not a whole number')
    c.block(opt, 'path', 'path')  # BasicSR reads it unconditionally; `path: {}` will do
    _check_datasets(c, opt, phase)
    _check_metric_protocols(c, opt)
    if phase != 'train':
        return opt
    train = c.block(opt, 'train', 'train')
    total_iter = c.number(train, 'total_iter', 'train.total_iter', integer=True, minimum=1, required=True)
    c.number(train, 'warmup_iter', 'train.warmup_iter', integer=True, minimum=-1)
    for key in [k for k in train if str(k).startswith('optim_')]:
        block = c.block(train, key, f'train.{key}')
        c.numbers_in(block, f'train.{key}')
        c.number(block, 'lr', f'train.{key}.lr', above=0, required=True)
    _check_scheduler(c, train, total_iter)
    val = c.block(opt, 'val', 'val', required=False)
    if val:
        c.number(val, 'val_freq', 'val.val_freq', integer=True, minimum=1, required=True)
    logger = c.block(opt, 'logger', 'logger')
    c.number(logger, 'print_freq', 'logger.print_freq', integer=True, minimum=1, required=True)
    c.number(logger, 'save_checkpoint_freq', 'logger.save_checkpoint_freq', integer=True, minimum=1, required=True)
    return opt


def check_output_folder(path, what):
    """Refuse an output folder that exists as something other than a folder."""
    if osp.exists(path) and not osp.isdir(path):
        raise UserError(f'{what} {path}: exists and is not a folder')
    return os.fspath(path)
