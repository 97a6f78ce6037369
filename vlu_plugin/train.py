"""`python -m vlu_plugin.train -opt X.yml [BasicSR flags]`: BasicSR's train pipeline with the plugin's fixes."""
import vlu_plugin  # noqa: F401  (shims and registration before BasicSR runs)
from vlu_plugin.utils.patches import run_pipeline


def main(argv=None):
    """Run BasicSR's training (`patch_basicsr()` applied) with experiments under the current directory."""
    return run_pipeline('train', argv)


if __name__ == '__main__':
    main()
