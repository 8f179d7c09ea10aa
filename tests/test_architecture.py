# SPDX-License-Identifier: Apache-2.0
"""The shape of the package: every module imports on its own, no import cycle, no module
too long, nothing at the top of ``qsmflow/`` that belongs in a sub-package.

Import cycles are judged on **module-level** imports, the ones that run when a module is
imported and can therefore fail (``ImportError: cannot import name ... (most likely due to
a circular import)``) depending on which module is imported first. Imports inside
functions run only when the function is called, after every module has loaded; they are
the documented way to reach a higher layer lazily (e.g. ``qsmflow.atlases.prefetch``
reading the parser's defaults), so they are not counted.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Where each installed package lives in the repository (``setup.cfg`` ``package_dir``).
PACKAGE_DIRS = {'qsmflow': ROOT / 'qsmflow', 'qsmflow.workflows': ROOT / 'workflows',
                'qsmflow.bids_specs': ROOT / 'bids_specs'}
#: The longest a module may be (lines).
MAX_LINES = 600
#: The only modules allowed directly in ``qsmflow/``.
TOP_LEVEL = {'__init__', '__main__', 'errors'}
#: Environment of the fresh interpreters: the installed package only (no PYTHONPATH; the
#: working directory is the repository's parent folder).
_ENV = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'} | {'NIPYPE_NO_ET': '1'}


def _modules() -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of the installed package."""
    out = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob('*.py')):
            rel = path.relative_to(folder).with_suffix('')
            if '__pycache__' in rel.parts or any(p.startswith('.') for p in rel.parts):
                continue
            if package == 'qsmflow' and rel.parts[0] in ('workflows', 'bids_specs'):
                continue  # symlinks or stale copies; the real ones are mapped above
            parts = [p for p in rel.parts if p != '__init__']
            out['.'.join([package, *parts])] = path
    return out


MODULES = _modules()

#: Optional extras (setup.cfg) that some modules import at their top: those modules are
#: import-checked only where the extra is installed (the torch twins of ``--device``).
OPTIONAL_TOP_IMPORTS = ('torch',)


def _importable() -> list[str]:
    """The modules the import tests load: all but ``__main__`` and those that need an
    optional extra which is not installed here."""
    import importlib.util
    import re

    missing = [m for m in OPTIONAL_TOP_IMPORTS if importlib.util.find_spec(m) is None]
    needs = re.compile(rf'^(import|from) ({"|".join(map(re.escape, missing))})\b', re.M)
    return sorted(m for m, path in MODULES.items() if not m.endswith('__main__')
                  and not (missing and needs.search(path.read_text())))


def _resolve(name: str, current: str, is_package: bool, level: int) -> str:
    if not level:
        return name
    base = current.split('.') if is_package else current.split('.')[:-1]
    base = base[:len(base) - (level - 1)]
    return '.'.join(base + ([name] if name else []))


def _targets(name: str) -> list[str]:
    """``name`` and its parent packages, as far as they are qsmflow modules."""
    parts = name.split('.')
    return [m for m in ('.'.join(parts[:i]) for i in range(1, len(parts) + 1)) if m in MODULES]


def module_level_imports(module: str, path: Path) -> set[str]:
    """qsmflow modules that ``module`` imports when it is imported (top-level statements,
    ``try``/``if`` blocks at top level included, ``if TYPE_CHECKING`` excluded)."""
    tree = ast.parse(path.read_text())
    is_package = path.name == '__init__.py'
    found = set()

    def visit(statements):
        for node in statements:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.update(_targets(alias.name))
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node.module or '', module, is_package, node.level)
                found.update(_targets(base))
                for alias in node.names:
                    found.update(_targets(f'{base}.{alias.name}'))
            elif isinstance(node, ast.If):
                if 'TYPE_CHECKING' not in ast.unparse(node.test):
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    own = set(_targets(module))  # a module's own packages are loaded before it anyway
    return {m for m in found if m not in own}


def import_graph() -> dict[str, set[str]]:
    """Module-level import graph of every qsmflow module."""
    return {m: module_level_imports(m, p) for m, p in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (``[a, b, ..., a]``), or None.

    Examples
    --------
    >>> find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) is None
    True
    >>> find_cycle({'a': {'b'}, 'b': {'a'}})
    ['a', 'b', 'a']
    """
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 'done'
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_module_list_is_complete():
    assert {'qsmflow.cli.config', 'qsmflow.config.settings', 'qsmflow.bids.atomic',
            'qsmflow.workflows.base', 'qsmflow.bids_specs'} <= set(MODULES)


def test_no_import_cycle_among_qsmflow_modules():
    graph = import_graph()
    assert graph['qsmflow.cli.config'] >= {'qsmflow.config', 'qsmflow.errors'}
    assert find_cycle(graph) is None, ' -> '.join(find_cycle(graph))


def test_every_module_imports_in_a_fresh_interpreter():
    """All modules in one new interpreter, in order; a failure names the module."""
    code = ('import importlib, json, sys\n'
            'failed = {}\n'
            'for name in json.loads(sys.argv[1]):\n'
            '    try:\n'
            '        importlib.import_module(name)\n'
            '    except Exception as exc:\n'
            '        failed[name] = f"{type(exc).__name__}: {exc}"\n'
            'print(json.dumps(failed))\n')
    names = _importable()
    proc = subprocess.run([sys.executable, '-c', code, json.dumps(names)], cwd=ROOT.parent,
                          capture_output=True, text=True, timeout=600,
                          env=_ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {}


#: Each module imported first, alone, in a child forked from an interpreter that has
#: loaded only the third-party libraries (a fresh interpreter per module costs ~2 s each).
_EACH_FIRST = """
import json, os, sys, traceback
import numpy, scipy.ndimage, scipy.fft, nibabel, numba, nipype.pipeline.engine  # noqa
failed = {}
for name in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            __import__(name)
            code = 0
        except BaseException:
            os.write(write, traceback.format_exc().encode()[-1500:])
            code = 1
        os._exit(code)
    os.close(write)
    message = os.read(read, 4000).decode(errors='replace')
    os.close(read)
    if os.waitpid(pid, 0)[1] != 0:
        failed[name] = message or 'died'
print(json.dumps(failed))
"""


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs fork')
def test_each_module_imports_first():
    """Each module imported first, alone: an order-dependent import failure shows here."""
    names = _importable()
    proc = subprocess.run([sys.executable, '-c', _EACH_FIRST, json.dumps(names)],
                          cwd=ROOT.parent, capture_output=True, text=True, timeout=600,
                          env=_ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    failed = json.loads(proc.stdout.splitlines()[-1])
    assert failed == {}, failed


def test_no_module_is_too_long():
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f'split these modules (lines): {long}'


def test_top_level_of_the_package_holds_only_entry_points_and_errors():
    top = {p.stem for p in (ROOT / 'qsmflow').glob('*.py')}
    assert top <= TOP_LEVEL, sorted(top - TOP_LEVEL)


def test_setup_cfg_lists_every_package():
    """A wheel (``pip install .``, the README's demo command) holds only the packages
    ``setup.cfg`` lists: every folder with an ``__init__.py`` must be there."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / 'setup.cfg')
    listed = set(cfg['options']['packages'].split())
    found = {'qsmflow.workflows', 'qsmflow.bids_specs'} | {
        '.'.join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / 'qsmflow').rglob('__init__.py')}
    assert found <= listed, sorted(found - listed)
