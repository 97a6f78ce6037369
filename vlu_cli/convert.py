"""`vlu convert <kind> <official checkpoint> <out>`: the authors' released weights → this package's networks.

Kinds: `vlunet` (the release's Lightning .ckpt; its CLIP adapters, when present, go to a second file
`<out stem>_clip_adapters<ext>`), `clip-adapters` (the release's clip_tuned.pth), `promptir`, `adair` and
`moceir` (Lightning .ckpt), `airnet` (All.pth and the per-task .pth files). Output is BasicSR's
`{'params': state_dict}` (.pth) or a flat state dict (.safetensors), chosen by the extension; either input
format is accepted.
Checkpoints that need pickled Python objects are refused unless `--trust` is given.
"""
import os.path as osp

# kind → (convert_official's arch name, what the release calls the file)
KINDS = {
    'vlunet': ('VLUNet', "VLU-Net's Lightning checkpoint (.ckpt)"),
    'clip-adapters': ('DegradationCLIP', "VLU-Net's clip_tuned.pth (or a VLU-Net .ckpt)"),
    'promptir': ('PromptIR', "PromptIR's Lightning checkpoint (.ckpt)"),
    'airnet': ('AirNet', "AirNet's All.pth / Denoise.pth / ..."),
    'adair': ('AdaIR', "AdaIR's Lightning checkpoint (.ckpt)"),
    'moceir': ('MoCEIR', "MoCE-IR's (or MoCE-IR-S's) Lightning checkpoint (.ckpt)"),
}
CLIP_SUFFIX = '_clip_adapters'


def add_parser(subparsers):
    """Register `convert`."""
    kinds = ', '.join(f'{k}: {v[1]}' for k, v in KINDS.items())
    p = subparsers.add_parser('convert', help='convert an official released checkpoint to this package',
                              description=f'Convert a released checkpoint. Kinds: {kinds}.')
    p.add_argument('kind', choices=sorted(KINDS))
    p.add_argument('checkpoint', help='the released file (.ckpt, .pth or .safetensors)')
    p.add_argument('out', help='output file; .safetensors writes a flat state dict, anything else {"params": ...}')
    p.add_argument('--trust', action='store_true',
                   help='allow checkpoints that need pickled Python objects (runs code from the file: trusted '
                        'sources only)')
    return 'convert'


def clip_adapters_path(out):
    """Where `vlu convert vlunet` writes the CLIP adapters it finds: `<out stem>_clip_adapters<ext>`."""
    stem, ext = osp.splitext(out)
    return f'{stem}{CLIP_SUFFIX}{ext or ".pth"}'


def write_state(state, out):
    """Save a state dict as BasicSR's `{'params': ...}`, or flat when `out` is .safetensors."""
    from vlu_plugin.utils.checkpoints import save_checkpoint
    if out.endswith('.safetensors'):
        return save_checkpoint(state, out)
    return save_checkpoint({'params': state}, out)


def check_against_default(arch_name, state):
    """A one-line note on whether `state` loads strictly into the full-size default `arch_name`."""
    if arch_name == 'DegradationCLIP':  # the adapters' width is the CLIP's; nothing to build cheaply
        return f'{len(state)} adapter tensors'
    import vlu_plugin  # noqa: F401  (registers the archs)
    from basicsr.utils.registry import ARCH_REGISTRY
    own = ARCH_REGISTRY.get(arch_name)().state_dict()
    differing = sorted(set(own) ^ set(state)) + sorted(k for k in set(own) & set(state)
                                                       if tuple(own[k].shape) != tuple(state[k].shape))
    if not differing:
        return f'loads strictly into the full-size {arch_name}'
    return (f'differs from the full-size {arch_name} defaults in {len(differing)} tensors (e.g. {differing[0]}); '
            'build network_g with the options it was trained with')


def check_network(kind, path, ckpt, state):
    """Refuse a conversion whose keys mostly have no place in the target network, naming what it looks like."""
    from vlu_plugin.utils.checkpoints import guess_network, key_match
    from vlu_plugin.utils.errors import UserError
    arch_name = KINDS[kind][0]
    if arch_name == 'DegradationCLIP':  # convert_official kept only adapter keys, or refused
        return
    score = key_match(arch_name, state)
    if score >= 0.5:
        return
    guess, guess_score = guess_network(ckpt, exclude=(arch_name,))
    kinds = {v[0]: k for k, v in KINDS.items()}
    looks = (f'; it looks like a {guess} checkpoint ({guess_score:.0%} of its keys match): '
             f'try `vlu convert {kinds.get(guess, guess)}`' if guess and guess_score >= 0.5
             else '; it matches none of the known networks')
    raise UserError(f'{path}: not a {arch_name} checkpoint: {score:.0%} of its {len(state)} keys are '
                    f'{arch_name} keys{looks}. Nothing was written')


def convert(kind, checkpoint, out, trust=False):
    """Convert `checkpoint` of `kind`; returns [(path written, note)]."""
    from vlu_plugin.utils.checkpoints import convert_official, load_checkpoint
    arch_name = KINDS[kind][0]
    ckpt = load_checkpoint(checkpoint, trust=trust)
    state = {k: v.detach().clone().contiguous() for k, v in convert_official(arch_name, ckpt).items()}
    check_network(kind, checkpoint, ckpt, state)
    written = [(write_state(state, out), check_against_default(arch_name, state))]
    if kind == 'vlunet':
        inner = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else {}
        if any(k.startswith('model_degradation.ad_') for k in inner):
            adapters = {k: v.detach().clone().contiguous()
                        for k, v in convert_official('DegradationCLIP', ckpt).items()}
            path = write_state(adapters, clip_adapters_path(out))
            written.append((path, f'the CLIP adapters ({len(adapters)} tensors)'))
    return written


def run(args):
    """Run `vlu convert`."""
    from vlu_plugin.utils.errors import UserError
    try:
        written = convert(args.kind, args.checkpoint, args.out, args.trust)
    except UserError:
        raise
    except (FileNotFoundError, RuntimeError, ValueError, KeyError, TypeError) as error:
        # one readable line; the refusal of pickled objects explains --trust itself
        raise UserError(error.args[0] if isinstance(error, KeyError) and error.args else str(error)) from error
    for path, note in written:
        print(f'wrote {path}: {note}')
    return 0
