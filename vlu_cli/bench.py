"""`vlu bench`: parameters, FLOPs, speed and peak memory of the full-size networks, optionally against the release.

With `--reference-vlunet <clone of github.com/xianggkl/VLU-Net>` the release's VLU-Net runs beside
ours with the same weights; the table then gives the speed ratio (release time / ours) and the largest
output difference. AirNet is measured the same way against itself with the other deformable-conv
kernel (on CPU: `AirNet (torchvision dcn)`, torchvision's kernel, as the reference for the plugin's;
`--no-reference-airnet` skips it). Times are medians of interleaved runs after warm-up (see
vlu_plugin.tools.benchmark). `--precision bf16|fp16` measures under autocast, `--compile` compiles each network
first (compilation happens in the warm-up runs). On CUDA the defaults are 128x128 and batch 8, the
shape whose training images/s (batch / fwd+bwd time, the `img/s` column) users compare.
"""
import contextlib
import csv

ARCHS = ('VLUNet', 'PromptIR', 'AirNet', 'AdaIR', 'MoCEIR')
RELEASE = 'VLUNet (release)'
QUICK = dict(size=16, runs=2, warmup=1)
DEFAULT = dict(size=64, runs=5, warmup=2)
CUDA_DEFAULT = dict(size=128, batch=8)
COLUMNS = ('arch', 'device', 'precision', 'compile', 'size', 'batch', 'params', 'gflops', 'fwd_ms', 'fwd_bwd_ms',
           'img_per_s', 'fwd_peak_mb', 'fwd_bwd_peak_mb', 'speedup_fwd', 'speedup_fwd_bwd', 'max_abs_diff')


def add_parser(subparsers):
    """Register `bench`."""
    p = subparsers.add_parser('bench', help='parameters, FLOPs, time and memory of the full-size networks')
    p.add_argument('--arch', default=','.join(ARCHS), help=f'comma-separated, from {",".join(ARCHS)}')
    p.add_argument('--size', type=int, help=f'square input size (default {DEFAULT["size"]}, --quick {QUICK["size"]})')
    p.add_argument('--batch', type=int, help=f'batch size (default 1; {CUDA_DEFAULT["batch"]} on CUDA at '
                                              f'{CUDA_DEFAULT["size"]}x{CUDA_DEFAULT["size"]})')
    p.add_argument('--runs', type=int, help=f'timed runs per measurement (default {DEFAULT["runs"]})')
    p.add_argument('--warmup', type=int, help=f'untimed runs first (default {DEFAULT["warmup"]})')
    p.add_argument('--quick', action='store_true', help='tiny input and few runs: a smoke test in seconds')
    p.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'),
                   help='auto: the CPU, and CUDA when present')
    p.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    p.add_argument('--no-backward', action='store_true', help='skip the forward+backward measurements')
    p.add_argument('--csv', help='also write the table here (atomically)')
    p.add_argument('--precision', default='fp32', choices=('fp32', 'bf16', 'fp16'),
                   help='measure under torch.autocast with this dtype (fp32: no autocast)')
    p.add_argument('--compile', action='store_true', help='torch.compile each network first (nn.Module.compile)')
    p.add_argument('--no-reference-airnet', action='store_true',
                   help='skip AirNet with the other deformable-conv kernel (on CPU torchvision\'s, ~15 s a step)')
    p.add_argument('--reference-vlunet', metavar='DIR',
                   help='root of the VLU-Net release (net/Final.py): compare speed and outputs with the same weights')
    return 'bench'


def devices(choice):
    """The torch devices to measure on."""
    import torch
    if choice == 'cpu' or (choice == 'auto' and not torch.cuda.is_available()):
        return [torch.device('cpu')]
    if choice == 'cuda':
        if not torch.cuda.is_available():
            raise RuntimeError('--device cuda: CUDA is not available here')
        return [torch.device('cuda')]
    return [torch.device('cpu'), torch.device('cuda')]


def measure(nets, inputs, device, settings, backward=True, context=None):
    """Rows of measurements for `nets` (name → network) on the same inputs, their runs interleaved."""
    from vlu_plugin.tools import benchmark as bm
    context = context or contextlib.nullcontext
    runs, warmup = settings['runs'], settings['warmup']
    rows = {name: {} for name in nets}
    for net in nets.values():
        net.eval()
    fwd = {name: bm.forward_fn(net, inputs, context) for name, net in nets.items()}
    for name, seconds in bm.median_times(fwd, device, runs, warmup).items():
        rows[name]['fwd_ms'] = seconds * 1e3
    for name, fn in fwd.items():
        rows[name]['fwd_peak_mb'] = bm.peak_memory_mb(fn, device)
    if backward:
        for net in nets.values():
            net.train()
        steps = {name: bm.train_step_fn(net, inputs, context) for name, net in nets.items()}
        for name, seconds in bm.median_times(steps, device, runs, warmup).items():
            rows[name]['fwd_bwd_ms'] = seconds * 1e3
            rows[name]['img_per_s'] = inputs[0].shape[0] / seconds
        for name, fn in steps.items():
            rows[name]['fwd_bwd_peak_mb'] = bm.peak_memory_mb(fn, device)
    return rows


def networks(arch, device, reference, reference_airnet):
    """(name → network, name of our network, name of the reference or None) for one arch on `device`."""
    from vlu_plugin.tools import benchmark as bm
    if arch == 'VLUNet' and reference:
        ours, release = bm.paired_vlunets(reference)
        return {arch: ours, RELEASE: release}, arch, RELEASE
    if arch == 'AirNet' and reference_airnet:
        ours, other, other_impl = bm.paired_airnets(device)
        name = f'AirNet ({other_impl} dcn)'
        return {arch: ours, name: other}, arch, name
    return {arch: bm.build_network(arch)}, arch, None


def bench(archs, size, batch, settings, device_choice='auto', reference=None, backward=True, log=print,
          precision='fp32', compile_nets=False, reference_airnet=True):
    """Measure each arch at full size on each device; returns the table's rows (dicts keyed by COLUMNS).

    `size`/`batch` None take the per-device defaults (CUDA: 128 and 8; elsewhere settings['size'] and 1).
    """
    import torch

    from vlu_plugin.tools import benchmark as bm
    from vlu_plugin.utils import precision as amp
    dtype = amp.PRECISIONS[precision]
    rows, flops = [], {}
    for device in devices(device_choice):
        cuda = device.type == 'cuda'
        dev_size = size or (CUDA_DEFAULT['size'] if cuda else settings['size'])
        dev_batch = batch or (CUDA_DEFAULT['batch'] if cuda else 1)
        if dtype is not None:
            context = lambda: amp.autocast(device, dtype)  # noqa: E731
        else:
            context = None
        for arch in archs:
            log(f'measuring {arch} on {device} ({dev_batch}x3x{dev_size}x{dev_size}, {precision}'
                f'{", compiled" if compile_nets else ""}) ...')
            nets, ours, ref = networks(arch, device, reference, reference_airnet)
            nets = {name: net.to(device) for name, net in nets.items()}
            inputs = bm.example_inputs(arch, dev_batch, dev_size, device)
            key = (arch, dev_batch, dev_size)
            if key not in flops:  # device-independent; counted once, uncompiled
                flops[key] = bm.count_flops(nets[ours].eval(), inputs)
            if compile_nets:
                for net in nets.values():
                    amp.compile_network(net, device, '--compile')
            measured = measure(nets, inputs, device, settings, backward, context)
            for name, net in nets.items():
                row = dict(arch=name, device=device.type, precision=precision, compile=compile_nets, size=dev_size,
                           batch=dev_batch, gflops=flops[key] / 1e9, params=sum(p.numel() for p in net.parameters()),
                           **measured[name])
                rows.append(row)
            if ref is not None:
                ours_row, ref_row = rows[-2], rows[-1]
                with (context or contextlib.nullcontext)():
                    ours_row['max_abs_diff'] = bm.max_output_difference(nets[ours], nets[ref], inputs)
                for k in ('fwd', 'fwd_bwd'):
                    if f'{k}_ms' in ours_row:
                        ours_row[f'speedup_{k}'] = ref_row[f'{k}_ms'] / ours_row[f'{k}_ms']
            del nets
            if cuda:
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
    head = ('arch', 'device', 'precision', 'input', 'params', 'GFLOPs', 'fwd ms', 'fwd+bwd ms', 'img/s',
            'fwd peak MB', 'fwd+bwd peak MB', 'x fwd', 'x fwd+bwd', 'max |diff|')
    body = [(r['arch'], r['device'], r['precision'] + (' compiled' if r.get('compile') else ''),
             f"{r['batch']}x{r['size']}x{r['size']}", f"{r['params'] / 1e6:.2f}M", _fmt(r['gflops'], 2),
             _fmt(r.get('fwd_ms')), _fmt(r.get('fwd_bwd_ms')), _fmt(r.get('img_per_s'), 2),
             _fmt(r.get('fwd_peak_mb')), _fmt(r.get('fwd_bwd_peak_mb')), _fmt(r.get('speedup_fwd'), 2),
             _fmt(r.get('speedup_fwd_bwd'), 2), _fmt(r.get('max_abs_diff'))) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ['  '.join(str(x).rjust(w) for x, w in zip(line, widths)) for line in [head] + body]
    return '\n'.join([lines[0], '-' * len(lines[0])] + lines[1:])


def write_csv(rows, path):
    """Write the rows to `path` through a temporary file and a rename."""
    from vlu_plugin.utils.atomic import atomic_path
    with atomic_path(path) as tmp, open(tmp, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: ('' if r.get(k) is None else r.get(k)) for k in COLUMNS} for r in rows)


def run(args):
    """Run `vlu bench`."""
    import torch

    from vlu_plugin.utils.errors import UserError
    archs = [a.strip() for a in args.arch.split(',') if a.strip()]
    unknown = [a for a in archs if a not in ARCHS]
    if unknown or not archs:
        raise UserError(f'--arch: unknown arch {unknown}; choose from {",".join(ARCHS)}')
    if args.reference_vlunet and 'VLUNet' not in archs:
        print('vlu bench: note: --reference-vlunet compares VLUNet only, which --arch leaves out')
    base = QUICK if args.quick else DEFAULT
    settings = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    if args.quick and args.size is None:
        args.size = QUICK['size']
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        rows = bench(archs, args.size, args.batch, settings, args.device, args.reference_vlunet,
                     backward=not args.no_backward, precision=args.precision, compile_nets=args.compile,
                     reference_airnet=not args.no_reference_airnet)
    except (FileNotFoundError, ImportError, RuntimeError) as error:
        raise UserError(str(error)) from error
    print(f'\nmedian of {settings["runs"]} runs after {settings["warmup"]} warm-up; {torch.get_num_threads()} CPU '
          f'threads; img/s: batch / fwd+bwd time; peak memory above the level before the step (CPU: RSS, CUDA: '
          'allocated)')
    print(format_table(rows))
    if args.csv:
        print(f'wrote {write_csv(rows, args.csv) or args.csv}')
    return 0
