# SPDX-License-Identifier: Apache-2.0
"""Progress on the terminal and one log per participant, fed by Nipype's status callback.

The terminal shows steps and participants done out of the total with the elapsed time (one
line updated in place on a terminal; a line per finished participant and per tenth of the
steps otherwise, e.g. in a SLURM log). Each participant's log,
``OUT_DIR/logs/sub-<label>.log``, gets the pre-flight report, every step's start and end
with times, and the full crash report of a failed step; runs append to it. Each run also
writes its configuration there (:func:`write_config`).
"""
from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path

from qsmflow import __version__


def log_path(out_dir, subject) -> Path:
    """Per-participant log file."""
    return Path(out_dir) / 'logs' / f'sub-{subject}.log'


def write_config(config, out_dir) -> Path:
    """Write the run configuration into ``OUT_DIR/logs/<level>-<time>_config.json``.

    One file per run (what was run, reproducibly: :meth:`qsmflow.config.RunConfig.from_file`
    reads it back); returns its path.
    """
    stamp = datetime.now().strftime('%Y%m%d-%H%M%S-%f')
    folder = Path(out_dir) / 'logs'
    folder.mkdir(parents=True, exist_ok=True)
    return config.to_file(folder / f'{config.analysis_level}-{stamp}_config.json')


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f'{hours}:{minutes:02d}:{secs:02d}'


class RunMonitor:
    """Count finished steps per acquisition; log; call ``on_complete(acq)`` when all ended.

    Parameters
    ----------
    acquisitions : list
        The acquisitions being processed.
    steps : dict
        ``{acq.name: number of steps}`` of each acquisition's sub-workflow.
    out_dir : Path
        Output dataset (the logs go into ``out_dir/logs``).
    on_complete : callable
        Called once per acquisition whose steps all ended without an exception.
    stream : file, optional
        Terminal stream (default: stdout).
    """

    def __init__(self, acquisitions, steps, out_dir, on_complete, stream=None):
        from qsmflow.execution.staging import name_prefix

        self.acqs = {a.name: a for a in acquisitions}
        self.labels = {a.name: name_prefix(a) for a in acquisitions}
        self.total = dict(steps)
        self.done = {name: set() for name in self.acqs}
        self.started = {name: set() for name in self.acqs}
        self.failed = {}
        self.completed = set()
        self.on_complete = on_complete
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
        self.t0 = time.time()
        self._last_tenth = 0
        self.subjects = {}
        for acq in acquisitions:
            self.subjects.setdefault(acq.subject, []).append(acq.name)
        self.out_dir = Path(out_dir)
        stamp = datetime.now().isoformat(timespec='seconds')
        for subject, names in self.subjects.items():
            self.log(subject, f'=== qsmflow {__version__} run started {stamp}: '
                              f'{", ".join(self.labels[n] for n in names)}')

    # -- logging --------------------------------------------------------------------------
    def log(self, subject: str, line: str) -> None:
        """Append ``line`` (with the elapsed time) to the participant's log."""
        path = log_path(self.out_dir, subject)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, 'a') as fobj:
            fobj.write(f'[{_clock(time.time() - self.t0)}] {line}\n')

    def _acq_of(self, node):
        fullname = getattr(node, 'fullname', node.name)
        for name in self.acqs:
            if f'{name}_wf.' in fullname:
                return name
        return None

    # -- Nipype status callback -----------------------------------------------------------
    def __call__(self, node, status: str) -> None:
        name = self._acq_of(node)
        if name is None:
            return
        acq, label = self.acqs[name], self.labels[name]
        step = getattr(node, 'fullname', node.name).split(f'{name}_wf.', 1)[-1]
        if status == 'start':
            self.started[name].add(step)
            self.log(acq.subject, f'{label}: {step} started')
            self._show(f'{label}: {step}')
            return
        if status == 'end' and step not in self.started[name] and not _has_result(node):
            # Nipype's Linear plugin ends the steps it skips after a failure too; a step
            # taken from the cache (MultiProc) ends without a start but has its result
            self.log(acq.subject, f'{label}: {step} not run (an earlier step failed)')
            return
        if status == 'exception':
            self.failed.setdefault(name, step)
            self.log(acq.subject, f'{label}: {step} FAILED')
        else:
            self.done[name].add(step)
            self.log(acq.subject, f'{label}: {step} finished')
        if (name not in self.completed and name not in self.failed
                and len(self.done[name]) >= self.total.get(name, 0)):
            self.completed.add(name)
            self.on_complete(acq)
            self.log(acq.subject, f'{label}: all {self.total[name]} steps finished')
            self._show(f'{label} done', force=True)
        else:
            self._show(f'{label}: {step} {"failed" if status == "exception" else "done"}')

    # -- terminal -------------------------------------------------------------------------
    def counts(self) -> tuple[int, int, int, int]:
        """``(steps done, steps total, participants done, participants total)``."""
        steps = sum(len(v) for v in self.done.values())
        total = sum(self.total.values())
        finished = sum(all(n in self.completed or n in self.failed for n in names)
                       for names in self.subjects.values())
        return steps, total, finished, len(self.subjects)

    def status_line(self, what: str = '') -> str:
        steps, total, finished, subjects = self.counts()
        line = (f'qsmflow: [{_clock(time.time() - self.t0)}] {steps}/{total} steps, '
                f'{finished}/{subjects} participants')
        return f'{line} | {what}' if what else line

    def _show(self, what: str, force: bool = False) -> None:
        line = self.status_line(what)
        if self.tty:
            self.stream.write('\r\033[K' + line[:160])
            if force:
                self.stream.write('\n')
            self.stream.flush()
            return
        steps, total, _, _ = self.counts()
        tenth = (10 * steps) // max(total, 1)
        if force or tenth > self._last_tenth:
            self._last_tenth = tenth
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """End the in-place line on a terminal."""
        if self.tty:
            self.stream.write('\n')
            self.stream.flush()


def _has_result(node) -> bool:
    """Whether Nipype stored ``node``'s result (it ran now or earlier)."""
    try:
        return (Path(node.output_dir()) / f'result_{node.name}.pklz').exists()
    except AttributeError:  # not a Nipype node (tests): count its end as done
        return True
