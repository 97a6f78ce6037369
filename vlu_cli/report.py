"""`vlu report <experiment or result folders...> [--out DIR]`: the side-by-side table and figures."""


def add_parser(subparsers):
    """Register `vlu report`."""
    parser = subparsers.add_parser('report', help='table (per set and average) and figures from BasicSR folders')
    parser.add_argument('folders', nargs='+', help='experiments/<name> or results/<name> folders of this plugin')
    parser.add_argument('--out', default='report', help='where report.md, results.csv and the PNGs go')
    parser.add_argument('--title', default='All-in-one restoration')
    return 'report'


def run(args):
    """Build the report and print its table."""
    from vlu_plugin.tools.report import build_report
    print(build_report(args.folders, args.out, args.title))
    print(f'report written to {args.out}/report.md')
    return 0
