"""`vlu prepare`: the embedded synthetic benchmark, any folder as a BasicSR LMDB, pair lists of the public sets.

  vlu prepare synthetic [--out datasets/synthetic] [--size 128] [--quick] [--force]
  vlu prepare lmdb <folder> <out.lmdb> [--overwrite]
  vlu prepare lists --root datasets --preset 3task|5task|cdd11 [--out DIR]
  vlu prepare check --root datasets --preset 3task|5task|cdd11 [--meta-info DIR]
"""
import argparse
import os
import os.path as osp
import sys

LIST_EXAMPLES = 10  # missing partners named in the report per set
PRESET_NAMES = ('3task', '5task', 'cdd11')  # = tasks.PRESETS (a test keeps them equal); no import at parse time
SIZES = (32, 300)  # crop sizes: the degradations need 32 px; the smallest bundled photo is 300 px high


def _crop_size(text):
    """argparse type of `synthetic --size`: checked at parse time."""
    try:
        size = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a whole number') from None
    if not SIZES[0] <= size <= SIZES[1]:
        raise argparse.ArgumentTypeError(f'{size} is out of range: use {SIZES[0]} to {SIZES[1]} pixels')
    return size


def _not_a_file(path, what):
    """Refuse an output path that exists as a file (a folder is expected there)."""
    from vlu_plugin.utils.errors import UserError
    if osp.exists(path) and not osp.isdir(path):
        raise UserError(f'{what} {path}: exists and is not a folder; remove it or choose another path')


def add_parser(subparsers):
    """Register `prepare` and its three sub-subcommands."""
    parser = subparsers.add_parser('prepare', help='build the synthetic benchmark, LMDBs and pair lists',
                                   description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='prepare_command', metavar='WHAT', required=True)
    p = sub.add_parser('synthetic', help="the embedded 5-task benchmark from scikit-image's bundled photos")
    p.add_argument('--out', default='datasets/synthetic', help='output folder (default: %(default)s)')
    p.add_argument('--size', type=_crop_size, default=128,
                   help=f'crop size in pixels, {SIZES[0]} to {SIZES[1]} (default: %(default)s)')
    p.add_argument('--quick', action='store_true', help='one crop per image: a tiny set for smoke tests')
    p.add_argument('--seed', type=int, default=0, help='seed of crops and degradations (default: %(default)s)')
    p.add_argument('--force', action='store_true', help='rebuild even if an identical build is there')
    p = sub.add_parser('lmdb', help='every image under a folder into a BasicSR LMDB (keys: relative paths)')
    p.add_argument('folder')
    p.add_argument('out', help='the LMDB folder to write; its name must end in .lmdb')
    p.add_argument('--overwrite', action='store_true', help='replace an existing LMDB')
    p = sub.add_parser('lists', help='find the public data sets under a root and write their pair lists')
    p.add_argument('--root', required=True, help='datasets root, laid out as in datasets/README.md')
    p.add_argument('--preset', required=True, choices=PRESET_NAMES)
    p.add_argument('--out', help='folder for the lists (default: ROOT/meta_info)')
    p = sub.add_parser('check', help="check a preset's lists and folders before training: missing, unpaired, "
                                     'prefixed names, size mismatches')
    p.add_argument('--root', required=True, help='datasets root, laid out as in datasets/README.md')
    p.add_argument('--preset', required=True, choices=PRESET_NAMES)
    p.add_argument('--meta-info', help='folder of the pair lists (default: ROOT/meta_info)')
    return 'prepare'


def run(args):
    """Run the chosen `prepare` command; a bad folder or list is a UserError (`vlu prepare <cmd>: error:`, exit 2)."""
    from vlu_plugin.utils.errors import UserError
    commands = {'synthetic': run_synthetic, 'lmdb': run_lmdb, 'lists': run_lists, 'check': run_check}
    try:
        return commands[args.prepare_command](args)
    except UserError:
        raise
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        raise UserError(str(err)) from err


def run_synthetic(args):
    """Build (or confirm) the embedded benchmark."""
    from vlu_plugin.data.synthetic_benchmark import build_synthetic_benchmark
    _not_a_file(args.out, '--out')
    build_synthetic_benchmark(args.out, size=args.size, quick=args.quick, force=args.force, seed=args.seed)
    return 0


def run_lmdb(args):
    """Write every image under `args.folder` to the LMDB `args.out`, keyed by relative path without extension."""
    from vlu_plugin.data.image_io import list_images, write_lmdb
    if not osp.isdir(args.folder):
        raise FileNotFoundError(f'folder {args.folder} does not exist')
    _not_a_file(args.out, 'LMDB target')
    images = list_images(args.folder)
    if not images:
        raise ValueError(f'no images under {args.folder}')
    keys = [osp.splitext(rel)[0] for rel in images]
    path = write_lmdb(args.folder, images, keys, args.out, overwrite=args.overwrite)
    print(f'wrote {len(images)} images to {path}')
    return 0


def _write_list(path, lines):
    """Write a list file atomically (a reader never sees half a list)."""
    from vlu_plugin.utils.atomic import atomic_write
    atomic_write(path, ''.join(f'{line}\n' for line in lines))


def _rel(root, where, path):
    """`path` (relative to the set's folder `where`) relative to the datasets root, with / separators."""
    return osp.relpath(osp.join(where, path), root).replace(os.sep, '/')


def _list_line(root, where, lq, gt):
    """A list line in the release's format, `./degraded, ./clean` relative to the datasets root."""
    return ', '.join(f'./{_rel(root, where, p)}' for p in (lq, gt) if p is not None)


def _fmt_expected(counts):
    return ' or '.join(f'{c:,}' for c in counts)


def run_lists(args):
    """Scan the standard layouts under --root, write <source>_<split>.txt lists, report counts and gaps."""
    from vlu_plugin.data.pairs import find_layout_pairs
    from vlu_plugin.data.tasks import sources_of
    root = args.root
    if not osp.isdir(root):
        raise FileNotFoundError(f'datasets root {root} does not exist')
    out = args.out or osp.join(root, 'meta_info')
    _not_a_file(out, '--out')
    os.makedirs(out, exist_ok=True)
    absent, gaps = [], 0
    print(f'pair lists for {args.preset} under {root} -> {out}')
    width = max(15, *(len(f'{s.name}_train') for s in sources_of(args.preset)))  # CDD-11's names are long
    for source in sources_of(args.preset):
        for split, folder, expected, what in (('train', source.train_dir, source.expected_train, source.what[0]),
                                              ('test', source.test_dir, source.expected_test, source.what[1])):
            where = osp.join(root, folder)
            label = f'{source.name}_{split}'
            if not osp.isdir(where):
                absent.append(label)
                print(f'  {label:{width}s} MISSING  {where} ({what}; see datasets/README.md)')
                continue
            found = find_layout_pairs(where, source.layout)
            lines = [_list_line(root, where, lq, gt) for lq, gt in found.pairs]
            if lines:
                _write_list(osp.join(out, f'{label}.txt'), lines)
            kind = 'clean images' if source.layout == 'clean' else 'pairs'
            note = '' if len(lines) in expected else f'  (expected {_fmt_expected(expected)})'
            print(f'  {label:{width}s} {len(lines):7,d} {kind}{note}  [{where}]')
            for name in found.missing[:LIST_EXAMPLES]:
                print(f'      missing partner: {_rel(root, where, name)} has no clean image')
            if len(found.missing) > LIST_EXAMPLES:
                print(f'      ... and {len(found.missing) - LIST_EXAMPLES} more without a partner')
            if found.unused:
                print(f'      {len(found.unused)} other images took part in no pair '
                      f'(e.g. {_rel(root, where, found.unused[0])})')
            if not lines:
                absent.append(label)
            gaps += len(found.missing)
    if absent or gaps:
        print(f'incomplete: {len(absent)} sets missing or empty ({", ".join(absent) or "none"}), '
              f'{gaps} degraded images without a partner')
    else:
        print('complete: every set was found')
    return 0


def _print_faults(title, items, show):
    """Up to LIST_EXAMPLES lines of one kind of fault, then how many more."""
    for item in items[:LIST_EXAMPLES]:
        print(f'      {title}: {show(item)}')
    if len(items) > LIST_EXAMPLES:
        print(f'      ... and {len(items) - LIST_EXAMPLES} more ({title})')


def run_check(args):
    """Report each set's usable pairs and faults; exit 1 when a set is unusable (absent or no usable pair)."""
    from vlu_plugin.data.check import check_preset
    root = args.root
    print(f'checking {args.preset} under {root}')
    unusable = []
    reports = check_preset(root, args.preset, args.meta_info)
    width = max(15, *(len(r.label) for r in reports))

    def rel(path):
        return osp.relpath(path, root).replace(os.sep, '/')

    for r in reports:
        if r.absent:
            unusable.append(r.label)
            print(f'  {r.label:{width}s} UNUSABLE  no list and no folder {r.where} (see datasets/README.md)')
            continue
        source = f'list {r.list_file}' if r.list_file else f'folder {r.where}'
        status = 'UNUSABLE' if r.usable == 0 else ('faults' if r.faults else 'ok')
        print(f'  {r.label:{width}s} {r.usable:7,d} {r.kind} usable, {r.faults} faults: {status}  [{source}]')
        _print_faults('missing gt', r.missing_gt, rel)
        _print_faults('missing lq', r.missing_lq, rel)
        _print_faults('unpaired lq (no clean partner in the folder)', r.unpaired_lq, rel)
        _print_faults('size mismatch', r.size_mismatch,
                      lambda m: f'{rel(m[0])} {m[2]} vs {rel(m[1])} {m[3]}')
        _print_faults('prefixed name', r.prefixed,
                      lambda m: f'listed {rel(m[0])}, the file is {rel(m[1])} (rewrite the list: vlu prepare lists)')
        if r.usable == 0:
            unusable.append(r.label)
    if unusable:
        # a finding, not a mistake in the command: exit 1, as `vlu restore` with unreadable images
        print(f'vlu prepare check: failed: unusable sets: {", ".join(unusable)}', file=sys.stderr)
        return 1
    print('every set is usable' if not any(r.faults for r in reports) else 'every set is usable, with the faults above')
    return 0
