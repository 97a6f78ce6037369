"""`vlu bench`: parameters, FLOPs, speed and peak memory of the full-size networks, optionally against the release.

With `--reference-vlunet <clone of github.com/xianggkl/VLU-Net>` the release's VLU-Net runs beside
ours with the same weights; the table then gives the speed ratio (release time / ours) and the largest
output difference. Times are medians of interleaved runs after warm-up (see vlu_plugin.benchmark).
"""
import csv
import os

import torch

ARCHS = ('VLUNet', 'PromptIR', 'AirNet', 'AdaIR', 'MoCEIR')
RELEASE = 'VLUNet (release)'
QUICK = dict(size=16, runs=2, warmup=1)
DEFAULT = dict(size=64, runs=5, warmup=2)
COLUMNS = ('arch', 'device', 'size', 'batch', 'params', 'gflops', 'fwd_ms', 'fwd_bwd_ms', 'fwd_peak_mb',
           'fwd_bwd_peak_mb', 'speedup_fwd', 'speedup_fwd_bwd', 'max_abs_diff')


def add_parser(subparsers):
    """Register `bench`."""
    p = subparsers.add_parser('bench', help='parameters, FLOPs, time and memory of the full-size networks')
    p.add_argument('--arch', default=','.join(ARCHS), help=f'comma-separated, from {",".join(ARCHS)}')
    p.add_argument('--size', type=int, help=f'square input size (default {DEFAULT["size"]}, --quick {QUICK["size"]})')
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--runs', type=int, help=f'timed runs per measurement (default {DEFAULT["runs"]})')
    p.add_argument('--warmup', type=int, help=f'untimed runs first (default {DEFAULT["warmup"]})')
    p.add_argument('--quick', action='store_true', help='tiny input and few runs: a smoke test in seconds')
    p.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'),
                   help='auto: the CPU, and CUDA when present')
    p.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    p.add_argument('--no-backward', action='store_true', help='skip the forward+backward measurements')
    p.add_argument('--csv', help='also write the table here (atomically)')
    p.add_argument('--reference-vlunet', metavar='DIR',
                   help='root of the VLU-Net release (net/Final.py): compare speed and outputs with the same weights')
    return 'bench'


def devices(choice):
    """The torch devices to measure on."""
    if choice == 'cpu' or (choice == 'auto' and not torch.cuda.is_available()):
        return [torch.device('cpu')]
    if choice == 'cuda':
        if not torch.cuda.is_available():
            raise RuntimeError('--device cuda: CUDA is not available here')
        return [torch.device('cuda')]
    return [torch.device('cpu'), torch.device('cuda')]


def measure(nets, inputs, device, settings, backward=True):
    """Rows of measurements for `nets` (name → network) on the same inputs, their runs interleaved."""
    from vlu_plugin import benchmark as bm
    runs, warmup = settings['runs'], settings['warmup']
    rows = {name: {} for name in nets}
    for net in nets.values():
        net.eval()
    fwd = {name: bm.forward_fn(net, inputs) for name, net in nets.items()}
    for name, seconds in bm.median_times(fwd, device, runs, warmup).items():
        rows[name]['fwd_ms'] = seconds * 1e3
    for name, fn in fwd.items():
        rows[name]['fwd_peak_mb'] = bm.peak_memory_mb(fn, device)
    if backward:
        for net in nets.values():
            net.train()
        steps = {name: bm.train_step_fn(net, inputs) for name, net in nets.items()}
        for name, seconds in bm.median_times(steps, device, runs, warmup).items():
            rows[name]['fwd_bwd_ms'] = seconds * 1e3
        for name, fn in steps.items():
            rows[name]['fwd_bwd_peak_mb'] = bm.peak_memory_mb(fn, device)
    return rows


def bench(archs, size, batch, settings, device_choice='auto', reference=None, backward=True, log=print):
    """Measure each arch at full size on each device; returns the table's rows (dicts keyed by COLUMNS)."""
    from vlu_plugin import benchmark as bm
    rows, flops = [], {}
    for device in devices(device_choice):
        for arch in archs:
            log(f'measuring {arch} on {device} ({batch}x3x{size}x{size}) ...')
            if arch == 'VLUNet' and reference:
                ours, release = bm.paired_vlunets(reference)
                nets = {arch: ours.to(device), RELEASE: release.to(device)}
            else:
                nets = {arch: bm.build_network(arch).to(device)}
            inputs = bm.example_inputs(arch, batch, size, device)
            if arch not in flops:  # device-independent; counted once, on the first device
                flops[arch] = bm.count_flops(nets[arch].eval(), inputs)
            measured = measure(nets, inputs, device, settings, backward)
            for name, net in nets.items():
                row = dict(arch=name, device=device.type, size=size, batch=batch, gflops=flops[arch] / 1e9,
                           params=sum(p.numel() for p in net.parameters()), **measured[name])
                rows.append(row)
            if len(nets) == 2:
                ours_row, release_row = rows[-2], rows[-1]
                ours_row['max_abs_diff'] = bm.max_output_difference(nets[arch], nets[RELEASE], inputs)
                for key in ('fwd', 'fwd_bwd'):
                    if f'{key}_ms' in ours_row:
                        ours_row[f'speedup_{key}'] = release_row[f'{key}_ms'] / ours_row[f'{key}_ms']
            del nets
            if device.type == 'cuda':
                torch.cuda.empty_cache()  # the next network's peak should not include this one's cache
    return rows


def _fmt(value, digits=1):
    if value is None:
        return '-'
    if isinstance(value, float):
        return f'{value:.2e}' if 0 < abs(value) < 1e-3 else f'{value:.{digits}f}'
    return str(value)


def format_table(rows):
    """A plain-text table of the rows."""
    head = ('arch', 'device', 'input', 'params', 'GFLOPs', 'fwd ms', 'fwd+bwd ms', 'fwd peak MB',
            'fwd+bwd peak MB', 'x fwd', 'x fwd+bwd', 'max |diff|')
    body = [(r['arch'], r['device'], f"{r['batch']}x{r['size']}x{r['size']}", f"{r['params'] / 1e6:.2f}M",
             _fmt(r['gflops'], 2), _fmt(r.get('fwd_ms')), _fmt(r.get('fwd_bwd_ms')), _fmt(r.get('fwd_peak_mb')),
             _fmt(r.get('fwd_bwd_peak_mb')), _fmt(r.get('speedup_fwd'), 2), _fmt(r.get('speedup_fwd_bwd'), 2),
             _fmt(r.get('max_abs_diff'))) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ['  '.join(str(x).rjust(w) for x, w in zip(line, widths)) for line in [head] + body]
    return '\n'.join([lines[0], '-' * len(lines[0])] + lines[1:])


def write_csv(rows, path):
    """Write the rows to `path` through a temporary file and a rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        with open(tmp, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows({k: ('' if r.get(k) is None else r.get(k)) for k in COLUMNS} for r in rows)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def run(args):
    """Run `vlu bench`."""
    archs = [a.strip() for a in args.arch.split(',') if a.strip()]
    unknown = [a for a in archs if a not in ARCHS]
    if unknown or not archs:
        print(f'vlu bench: error: unknown arch {unknown}; choose from {",".join(ARCHS)}')
        return 2
    if args.reference_vlunet and 'VLUNet' not in archs:
        print('vlu bench: note: --reference-vlunet compares VLUNet only, which --arch leaves out')
    base = QUICK if args.quick else DEFAULT
    settings = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        rows = bench(archs, settings['size'], args.batch, settings, args.device, args.reference_vlunet,
                     backward=not args.no_backward)
    except (FileNotFoundError, ImportError, RuntimeError) as error:
        print(f'vlu bench: error: {error}')
        return 1
    print(f'\nmedian of {settings["runs"]} runs after {settings["warmup"]} warm-up; {torch.get_num_threads()} CPU '
          f'threads; peak memory above the level before the step (CPU: RSS, CUDA: allocated)')
    print(format_table(rows))
    if args.csv:
        print(f'wrote {write_csv(rows, args.csv) or args.csv}')
    return 0
