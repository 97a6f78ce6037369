"""`vlu --help` and `vlu <command> --help` answer from argparse alone: no torch, BasicSR, CLIP or OpenCV imported."""
import json
import os
import subprocess
import sys

from conftest import REPO

HEAVY = ('torch', 'basicsr', 'open_clip', 'cv2', 'numpy', 'vlu_plugin')

# in a fresh interpreter: `--help` of vlu, of every command and of every `vlu prepare` command, in one process
# (the heavy modules would stay imported after the first that pulls them)
PROBE = '''
import argparse, contextlib, io, json, sys
import vlu_cli
sub = argparse.ArgumentParser(prog='vlu').add_subparsers()
for module in vlu_cli._subcommand_modules():
    module.add_parser(sub)
commands = [[]] + [[name] for name in sub.choices]
for name, parser in sub.choices.items():
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            commands += [[name, inner] for inner in action.choices]
results = []
for command in commands:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            status = vlu_cli.main(command + ['--help'])
        except SystemExit as done:
            status = done.code
    results.append([command, status, out.getvalue()])
print(json.dumps({'results': results, 'heavy': sorted(m for m in HEAVY if m in sys.modules)}))
'''


def test_help_imports_nothing_heavy():
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, '-c', f'HEAVY = {HEAVY!r}\n{PROBE}'], capture_output=True, text=True,
                          env=env, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.splitlines()[-1])
    commands = [' '.join(command) for command, _, _ in found['results']]
    assert {'', 'demo', 'report', 'restore', 'train', 'test', 'bench', 'convert', 'prepare', 'prepare lmdb'} \
        <= set(commands), commands
    for command, status, text in found['results']:
        assert status == 0, (command, status)
        assert text.startswith(f'usage: {" ".join(["vlu", *command])}'), (command, text[:200])
    assert found['heavy'] == [], f'--help imported {found["heavy"]}'
