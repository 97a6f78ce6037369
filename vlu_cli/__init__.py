"""The `vlu` command: its subcommands come from the modules of this package.

Each module defines `add_parser(subparsers)`, returning the name (or names) it registered, and either
`run(args)` or, for commands that hand their flags to BasicSR untouched, `run_argv(name, argv)`.
A module imports only the standard library at module level: `vlu --help` and `vlu <command> --help` parse
without torch, BasicSR or CLIP; `main` imports `vlu_plugin` (the BasicSR shim and the registration) after
parsing, and each command imports what it runs on inside `run`.
A `UserError` raised by any of them is printed as `vlu <command>: error: <message>` on stderr, exit status 2
(set VLU_TRACEBACK=1 for the traceback), as argparse reports a bad flag. A command that ran but could not
do all of its inputs (unreadable images, unusable data sets) says so and exits 1.

The CLI is its own top-level package, not `vlu_plugin.cli`: importing any module of `vlu_plugin` runs the
package's `__init__`, which registers everything with BasicSR (and so imports torch).
"""
import argparse
import functools
import importlib
import os
import pkgutil
import sys


def _subcommand_modules():
    """Import the subcommand modules of this package, in name order."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith('_'):
            yield importlib.import_module(f'{__name__}.{info.name}')


def main(argv=None):
    """Entry point of the `vlu` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog='vlu', description='VLU-Net and all-in-one baselines on BasicSR.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    modules = {}
    for module in _subcommand_modules():
        names = module.add_parser(sub)
        for name in [names] if isinstance(names, str) else names:
            modules[name] = module
    command = argv[0] if argv else 'vlu'
    # `vlu train --help` is answered by argparse: BasicSR's parser would first import torch and BasicSR
    if argv and hasattr(modules.get(argv[0]), 'run_argv') and not {'-h', '--help'} & set(argv[1:]):
        execute = functools.partial(modules[command].run_argv, command, argv[1:])
    else:
        args = parser.parse_args(argv)  # --help and bad flags end here, before anything heavy is imported
        # a command's own subcommand (`vlu prepare lmdb`) is part of its name in messages
        command = ' '.join([args.command] + [str(v) for k, v in sorted(vars(args).items())
                                             if k.endswith('_command') and v])
        execute = functools.partial(modules[args.command].run, args)
    import vlu_plugin  # noqa: F401  (shims and registration before BasicSR is used)
    from vlu_plugin.utils.errors import UserError
    try:
        return execute()
    except UserError as error:
        # the one place user errors are reported: like argparse's, on stderr with status 2
        if os.environ.get('VLU_TRACEBACK'):
            raise
        print(f'vlu {command}: error: {error}', file=sys.stderr, flush=True)
        return 2


if __name__ == '__main__':
    sys.exit(main())
