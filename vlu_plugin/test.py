"""`python -m vlu_plugin.test -opt X.yml [BasicSR flags]`: BasicSR's test pipeline with the plugin's fixes."""
import vlu_plugin  # noqa: F401  (shims and registration before BasicSR runs)
from vlu_plugin.utils.patches import run_pipeline


def main(argv=None):
    """Run BasicSR's testing (`patch_basicsr()` applied) with results under the current directory."""
    return run_pipeline('test', argv)


if __name__ == '__main__':
    main()
