# SPDX-License-Identifier: Apache-2.0
"""``qsmflow bench --threads``: one line per thread count with time and peak RSS; the
resettable peak-RSS reader it uses."""
import sys

import numpy as np
import pytest

from qsmflow.bench import rss


#: Run in a fresh interpreter: inside the test session the allocator may serve the block
#: from memory earlier tests left resident (measured in CI: no growth at all), which says
#: nothing about the reader.
_PEAK_SCRIPT = """
import numpy as np
from qsmflow.bench import rss
assert rss.reset_peak()
before = rss.current_bytes()
block = np.ones(50_000_000 // 8)  # 50 MB, touched
inside = rss.peak_bytes()
del block
reset = rss.reset_peak()
print(before, inside, int(reset), rss.peak_bytes())
"""


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc')
def test_peak_rss_window_sees_an_allocation_and_resets():
    import subprocess

    out = subprocess.run([sys.executable, '-c', _PEAK_SCRIPT], check=True, capture_output=True,
                         text=True).stdout.split()
    before, inside, reset, after = (int(v) for v in out)
    assert inside - before >= 45e6
    assert reset == 1 and after < inside - 40e6


def test_bench_threads_prints_a_line_per_thread_count(capsys):
    from qsmflow.bench.threads import main
    from qsmflow.cli.parser import build_tools_parser

    opts = build_tools_parser().parse_args(['bench', '--threads', '1', '2', '--size', 'hires'])
    assert opts.threads == [1, 2] and opts.size == 'hires'
    assert main([1, 2], size='tiny', phantom='default') == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in out if line.split()[:2] in (['1', 'tiny'], ['2', 'tiny'])]
    assert [row[0] for row in rows] == ['1', '2']
    for row in rows:
        seconds, peak_gb = float(row[2]), float(row[4])
        assert seconds > 0 and 0.05 < peak_gb < 4
    assert out[-1].endswith('identical across thread counts: yes')


def test_chain_reads_the_echoes_from_disk_and_drops_them_after_their_last_step(tmp_path):
    from qsmflow.bench.steps import default_chain, simulated
    from qsmflow.bench.threads import _echoes, _write_echoes

    data = simulated('default', 'tiny')
    mag, phase = data['mag'], data['phase']
    _write_echoes(data, tmp_path)
    assert 'mag' not in data and 'phase' not in data
    inputs = _echoes(data)
    assert inputs['mag'].tobytes() == mag.tobytes()
    assert inputs['phase'].tobytes() == phase.tobytes()
    seen = []

    def timed(label, func):
        seen.append((label, sorted(inputs)))
        return func()

    out = default_chain(inputs, data['vox'], data['b0_dir'], data['tes'], timed, keep=False)
    assert sorted(out) == ['chi', 'chi_ref']
    held = dict(seen)
    assert held['phase-quality mask'] == ['mag', 'phase'] and held['PDF'] == []
    assert inputs == {}
