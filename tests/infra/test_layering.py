"""The package's layering, read from its source with ast (every import, also those inside functions):
archs and data never import models, tools or the CLI; utils imports none of archs, data, models, tools or the CLI
at module level; nothing outside the CLI (the top-level package vlu_cli) imports it, and it imports vlu_plugin only
inside functions (after parsing); and the modules import one another without a circle."""
import ast
import os
import os.path as osp

from conftest import REPO

PACKAGE = osp.join(REPO, 'vlu_plugin')
CLI = osp.join(REPO, 'vlu_cli')


def module_imports():
    """{module: [(imported vlu_plugin or vlu_cli module, at module level?)]} for every module of both packages."""
    found = {}
    for folder, _, files in [walked for package in (PACKAGE, CLI) for walked in os.walk(package)]:
        for name in files:
            if not name.endswith('.py'):
                continue
            path = osp.join(folder, name)
            rel = osp.relpath(path, osp.dirname(PACKAGE))[:-3].replace(os.sep, '.')
            module = rel[:-len('.__init__')] if rel.endswith('.__init__') else rel
            tree = ast.parse(open(path, encoding='utf-8').read())
            top = {id(node) for node in tree.body}
            imports = []
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    targets = [f'{node.module}.{a.name}' for a in node.names]
                else:
                    continue
                imports += [(t, id(node) in top) for t in targets if t.split('.')[0] in ('vlu_plugin', 'vlu_cli')]
            found[module] = imports
    return found


def resolve(target, modules):
    """The package module an import names (`from vlu_plugin.utils import records` → vlu_plugin.utils.records)."""
    while target not in modules and '.' in target:
        target = target.rsplit('.', 1)[0]
    return target


def layer(module):
    """'archs', 'data', 'models', 'utils', 'tools', 'cli', ... or 'root' for the package's own modules."""
    if module.split('.')[0] == 'vlu_cli':
        return 'cli'
    parts = module.split('.')
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ('archs', 'data', 'models', 'utils',
                                                                         'tools', 'cli', 'losses', 'metrics')) \
        else 'root'


def test_layers_import_only_downwards():
    imports = module_imports()
    assert 'vlu_plugin.utils.patches' in imports and 'vlu_plugin.tools.restorer' in imports
    assert 'vlu_cli.restore' in imports and 'vlu_cli' in imports
    wrong = []
    for module, targets in imports.items():
        for target, at_top in targets:
            target = resolve(target, imports)
            src, dst = layer(module), layer(target)
            if dst == 'cli' and src != 'cli':
                wrong.append(f'{module} imports the CLI ({target})')
            if src == 'cli' and dst != 'cli' and at_top:  # `vlu --help` must not wait for torch and BasicSR
                wrong.append(f'{module} (CLI) imports {target} at module level')
            if src in ('archs', 'data') and dst in ('models', 'tools', 'cli'):
                wrong.append(f'{module} ({src}) imports {target}')
            if src == 'utils' and at_top and dst in ('archs', 'data', 'models', 'tools', 'cli', 'losses', 'metrics'):
                wrong.append(f'{module} (utils) imports {target} at module level')
            if src in ('models', 'losses', 'metrics') and dst in ('tools', 'cli'):
                wrong.append(f'{module} ({src}) imports {target}')
    assert not wrong, '\n'.join(wrong)


def test_no_import_circles():
    imports = module_imports()
    graph = {m: {resolve(t, imports) for t, _ in targets} - {m, 'vlu_plugin'} for m, targets in imports.items()}
    # `import vlu_plugin` (registration) is the package's public entry, not a layer: leaving it out of the graph
    # keeps the check on the modules themselves
    circles, state = [], {}

    def visit(node, path):
        state[node] = 'open'
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 'open':
                circles.append(' → '.join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 'done'

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, '\n'.join(circles)
