# SPDX-License-Identifier: Apache-2.0
"""``qsmflow bench --cohort N [N ...]``: whole participant-level runs of growing cohorts.

For each cohort size, writes that many demo phantom participants (2 mm by default, each at
its own pose, SNR 100) plus the phantom template, runs the participant level of the demo's
configuration (:func:`qsmflow.cli.demo.demo_config`: registration and atlas tables,
MultiProc with ``--nprocs``), written to a file and read back in a fresh process, and
reports the wall time, the time per participant and the peak of the summed resident memory
of the whole process tree (the qsmflow process and every Nipype worker and ANTs
subprocess, sampled from ``/proc`` every 0.2 s), next to the MultiProc memory budget.
Linux only (reads ``/proc``).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


#: Participant level of a configuration file, in a fresh process (``sys.argv[1]``).
_RUN_CONFIG = ('import sys; from qsmflow.config import RunConfig; '
               'from qsmflow.cli.participant import run_participants; '
               'sys.exit(run_participants(RunConfig.from_file(sys.argv[1])))')


def tree_rss_bytes(pid: int) -> int:
    """Summed resident memory (bytes) of process ``pid`` and all its descendants."""
    children, rss = {}, {}
    page = os.sysconf('SC_PAGE_SIZE')
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as fobj:
                fields = fobj.read().rsplit(')', 1)[1].split()
            with open(f'/proc/{entry}/statm') as fobj:
                rss[int(entry)] = int(fobj.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += rss.get(current, 0)
        todo.extend(children.get(current, []))
    return total


def run_and_sample(cmd, env, interval_s: float = 0.2) -> tuple[int, float, int, str]:
    """Run ``cmd``; return ``(exit code, wall s, peak tree RSS bytes, output tail)``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    peak = [0]
    chunks = []
    reader = threading.Thread(target=lambda: chunks.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak[0] = max(peak[0], tree_rss_bytes(proc.pid))
        time.sleep(interval_s)
    reader.join()
    return proc.returncode, time.perf_counter() - t0, peak[0], ''.join(chunks[-5:])


def cohort(n: int) -> list[dict]:
    """``n`` phantom participants spread over adult ages, alternating sex."""
    return [{'participant_id': f'{i + 1:02d}', 'age': 20 + (i * 53) // max(n - 1, 1),
             'sex': 'FM'[i % 2]} for i in range(n)]


def main(sizes, *, nprocs: int = 2, size: str = 'small', keep: str | None = None) -> int:
    """Benchmark each cohort size in ``sizes``; print a table; 0 if every run succeeded."""
    from qsmflow.cli.demo import DEMO_POSE, demo_config
    from qsmflow.phantom.template import ATLAS, write_template

    total_gb = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1e9
    print(f'qsmflow bench --cohort: phantom {size}, --nprocs {nprocs}, registration + '
          f'{ATLAS} tables; machine {os.cpu_count()} CPUs, {total_gb:.1f} GB '
          f'(MultiProc budget {0.9 * total_gb:.1f} GB)')
    print(f'  {"participants":>12} {"wall (s)":>9} {"s/participant":>14} {"peak RSS (GB)":>14}')
    failed = 0
    with tempfile.TemporaryDirectory(dir=keep) as tmp:
        from qsmflow.phantom.bids import write_dataset

        for n in sizes:
            root = Path(tmp) / f'cohort-{n}'
            write_dataset(root / 'rawdata', root / 'truth', cohort(n), size=size, **DEMO_POSE)
            write_template(root / 'templateflow', size=size)
            config = demo_config(root / 'rawdata', root / 'out', size=size, nprocs=nprocs,
                                 templateflow_home=root / 'templateflow',
                                 work_dir=root / 'work', skip_bids_validation=True)
            config_file = config.to_file(root / 'config.json')
            env = dict(os.environ, QSMFLOW_CACHE=str(root / 'cache'), NIPYPE_NO_ET='1')
            cmd = [sys.executable, '-c', _RUN_CONFIG, str(config_file)]
            code, wall, peak, tail = run_and_sample(cmd, env)
            if code:
                failed += 1
                print(f'  {n:>12} FAILED (exit {code}): {tail.strip()[-300:]}')
                continue
            print(f'  {n:>12} {wall:9.1f} {wall / n:14.1f} {peak / 1e9:14.2f}', flush=True)
    return 1 if failed else 0
