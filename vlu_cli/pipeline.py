"""`vlu train` and `vlu test`: BasicSR's own pipelines; every flag goes to BasicSR's parser untouched."""
import importlib

PIPELINES = {
    'train': "BasicSR's training (-opt X.yml, --launcher, --auto_resume, --debug, --force_yml, --local_rank)",
    'test': "BasicSR's testing (-opt X.yml, --launcher, --force_yml)",
}


def add_parser(subparsers):
    """Register `train` and `test`; their arguments are BasicSR's (only `--help` is answered by `vlu` itself)."""
    for name, help_text in PIPELINES.items():
        subparsers.add_parser(name, help=help_text, usage=f'vlu {name} -opt X.yml [BasicSR flags]',
                              description=f'{help_text}, with the plugin\'s fixes (vlu_plugin.patch_basicsr()). '
                                          'Every other flag goes to BasicSR\'s parser untouched.')
    return list(PIPELINES)


def run_argv(name, argv):
    """Run BasicSR's `name` pipeline with `argv` as its command line."""
    return importlib.import_module(f'vlu_plugin.{name}').main(argv)
