# SPDX-License-Identifier: Apache-2.0
"""A throw-away single-node SLURM cluster on this machine, for tests.

:class:`SlurmCluster` installs Debian's ``munge slurmctld slurmd slurm-client`` when they
are missing (``apt-get``; root only), writes a localhost configuration into a temporary
folder, starts ``munged`` (as user munge), ``slurmctld`` and ``slurmd`` by hand with PID
files (no systemd needed), waits until the node is idle and, at the end, cancels the jobs
and stops every daemon by its PID. Nothing system-wide is configured: clients find the
cluster through ``SLURM_CONF`` in :attr:`SlurmCluster.env`, and slurm reaches munge through
``AuthInfo=socket=...``.

Usage::

    cluster = SlurmCluster().start()
    try:
        subprocess.run(['sbatch', '--wrap', 'hostname'], env=cluster.env, check=True)
        cluster.wait_for_jobs()
    finally:
        cluster.stop()

A daemon that does not come up raises :class:`ClusterError` with the tail of its log.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

#: Debian packages providing the daemons and the client commands.
PACKAGES = ('munge', 'slurmctld', 'slurmd', 'slurm-client')
#: Executables the cluster needs (all from :data:`PACKAGES`).
EXECUTABLES = ('munged', 'slurmctld', 'slurmd', 'sbatch', 'squeue', 'sinfo', 'scontrol',
               'scancel')
_SBIN = ('/usr/sbin', '/sbin', '/usr/bin', '/bin')


class ClusterError(RuntimeError):
    """The SLURM test cluster could not be installed, started or used."""


def _which(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get('PATH', ''), *_SBIN])
    return shutil.which(name, path=path)


def missing_executables() -> list[str]:
    """The :data:`EXECUTABLES` not found on this machine."""
    return [name for name in EXECUTABLES if _which(name) is None]


def unavailable_reason() -> str | None:
    """Why a cluster cannot be started here (``None`` when it can, possibly after install)."""
    if not missing_executables():
        return None if os.geteuid() == 0 else 'the SLURM daemons must be started as root'
    if os.geteuid() != 0:
        return (f'{", ".join(missing_executables())} not installed, and installing them '
                f'needs root')
    if _which('apt-get') is None:
        return f'{", ".join(missing_executables())} not installed and no apt-get to install them'
    return None


def install_packages(timeout: float = 600) -> None:
    """``apt-get install`` :data:`PACKAGES` if any executable is missing.

    Package scripts are kept from starting the system's own daemons (a temporary
    ``policy-rc.d`` answering "denied", removed afterwards); ``apt-get update`` runs only
    when the first attempt fails (stale or empty package lists).
    """
    if not missing_executables():
        return
    if os.geteuid() != 0:
        raise ClusterError(f'{", ".join(missing_executables())} missing; installing '
                           f'{" ".join(PACKAGES)} needs root')
    env = {**os.environ, 'DEBIAN_FRONTEND': 'noninteractive'}
    policy = Path('/usr/sbin/policy-rc.d')
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text('#!/bin/sh\n# written by qsmflow tests/slurm_cluster.py\nexit 101\n')
        policy.chmod(0o755)
    install = ['apt-get', 'install', '-y', '--no-install-recommends', *PACKAGES]
    try:
        proc = _call(install, timeout, env=env)
        if proc.returncode != 0:
            _call(['apt-get', 'update'], timeout, env=env)
            proc = _call(install, timeout, env=env)
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    if proc.returncode != 0 or missing_executables():
        raise ClusterError(f'{" ".join(install)} failed (exit {proc.returncode}); still '
                           f'missing {missing_executables()}:\n{_tail(proc.stdout + proc.stderr)}')


def _call(args: list[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """Run ``args`` with its output captured as text; the caller checks the exit status."""
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=timeout,
                          **kwargs)


def _tail(text: str, lines: int = 25) -> str:
    return '\n'.join(text.strip().splitlines()[-lines:])


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return _tail(path.read_text(errors='replace'), lines) or '(log empty)'
    except OSError:
        return f'(no log at {path})'


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on localhost right now."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(('127.0.0.1', 0))
            sockets.append(sock)
            ports.append(sock.getsockname()[1])
    finally:
        for sock in sockets:
            sock.close()
    return ports


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f'/proc/{pid}/stat') as fh:
            return fh.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f'/proc/{pid}/cmdline').read_bytes().replace(b'\0', b' ').decode(
            errors='replace')
    except OSError:
        return ''


def _node_hardware() -> dict:
    """This machine as ``slurmd -C`` sees it: NodeName, CPUs, sockets, cores, RealMemory."""
    proc = _call([_which('slurmd'), '-C'])
    first = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ''
    fields = dict(item.split('=', 1) for item in first.split() if '=' in item)
    if proc.returncode != 0 or 'NodeName' not in fields or 'CPUs' not in fields:
        raise ClusterError(f'slurmd -C failed (exit {proc.returncode}): '
                           f'{_tail(proc.stdout + proc.stderr)}')
    return fields


class SlurmCluster:
    """One ``slurmctld`` + one ``slurmd`` (this machine) + ``munged``, all in ``root``.

    ``root`` (default: a new temporary folder, removed by :meth:`stop`) holds the
    configuration, munge key and socket, state, spool, PID files and logs. Clients need
    :attr:`env` (``SLURM_CONF``; ``LOGNAME``, which Nipype's SLURM plugin puts in job names).
    """

    partition = 'debug'

    def __init__(self, root: str | os.PathLike | None = None):
        self._own_root = root is None
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix='qsmflow-slurm-'))
        self.conf = self.root / 'etc' / 'slurm.conf'
        self.logs = self.root / 'log'
        self.munge_dir = self.root / 'munge'
        self.pid_files = {'munged': self.munge_dir / 'munged.pid',
                          'slurmctld': self.root / 'run' / 'slurmctld.pid',
                          'slurmd': self.root / 'run' / 'slurmd.pid'}
        self.log_files = {'munged': self.munge_dir / 'munged.log',
                          'slurmctld': self.logs / 'slurmctld.log',
                          'slurmd': self.logs / 'slurmd.log'}
        self.node = None
        self.started = False
        self.env = {**os.environ, 'SLURM_CONF': str(self.conf),
                    'LOGNAME': os.environ.get('LOGNAME') or pwd.getpwuid(os.getuid()).pw_name}
        for name in ('SLURM_JOB_ID', 'SLURM_JOBID'):  # not a job of some outer cluster
            self.env.pop(name, None)

    # ------------------------------------------------------------------ life cycle
    def start(self, timeout: float = 60) -> SlurmCluster:
        """Install if needed, configure, start the three daemons, wait for an idle node."""
        reason = unavailable_reason()
        if reason:
            raise ClusterError(reason)
        install_packages()
        try:
            self._configure()
            self._start_munge()
            self._start_daemon('slurmctld', ['-i'])
            self._wait(self._controller_answers, timeout, 'slurmctld does not answer',
                       'slurmctld')
            self._start_daemon('slurmd', [])
            self._wait(self._node_idle, timeout, f'node {self.node} does not become idle',
                       'slurmd')
        except BaseException:
            self.stop()
            raise
        self.started = True
        return self

    def stop(self, timeout: float = 30) -> None:
        """Cancel every job, stop the daemons by PID (TERM, then KILL), remove ``root``.

        Job processes left by the cluster (identified by this cluster's ``SLURM_CONF`` in
        their environment) are ended by PID too, so nothing keeps running afterwards.
        """
        if pid_alive(self._pid('slurmctld') or -1):
            self._quiet(['scancel', '--full', '--partition', self.partition])
            self._wait_quiet(lambda: not self.job_ids(), 15)
        for name in ('slurmd', 'slurmctld', 'munged'):
            pid = self._pid(name)
            if pid and pid_alive(pid) and name in _cmdline(pid):
                self._terminate(pid, timeout)
        for pid in self.leftover_pids():
            self._terminate(pid, 5)
        self.started = False
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def leftover_pids(self) -> list[int]:
        """PIDs of processes whose environment names this cluster's configuration, other
        than this process and the three daemons: job scripts, ``slurmstepd``, anything a
        job started, a client command still running."""
        marker = f'SLURM_CONF={self.conf}'.encode()
        skip = {os.getpid(), *(self._pid(name) for name in self.pid_files)}
        found = []
        for entry in Path('/proc').iterdir():
            if not entry.name.isdigit() or int(entry.name) in skip:
                continue
            try:
                environ = (entry / 'environ').read_bytes()
            except OSError:
                continue
            if marker in environ.split(b'\0') and pid_alive(int(entry.name)):
                found.append(int(entry.name))
        return found

    # ------------------------------------------------------------------ use
    def run(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster; raise with its output on error."""
        proc = _call(args, timeout, env=self.env)
        if proc.returncode != 0:
            raise ClusterError(f'{" ".join(args)} failed (exit {proc.returncode}): '
                               f'{(proc.stdout + proc.stderr).strip()}')
        return proc

    def _quiet(self, args: list[str]) -> None:
        try:
            _call(args, 30, env=self.env)
        except (OSError, subprocess.SubprocessError):
            pass

    def job_ids(self) -> list[str]:
        """Jobs the controller still lists as pending, running or completing."""
        out = self.run(['squeue', '--noheader', '--format=%i']).stdout
        return out.split()

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller remembers, as ``scontrol show job`` fields (``JobId``,
        ``JobName``, ``JobState``, ``ExitCode``, ``NumCPUs``, ``MinMemoryNode``, ...).
        Finished jobs stay listed for ``MinJobAge`` (an hour here)."""
        out = self.run(['scontrol', '--oneliner', 'show', 'job']).stdout
        jobs = []
        for line in out.splitlines():
            fields = dict(item.split('=', 1) for item in line.split() if '=' in item)
            if 'JobId' in fields:
                jobs.append(fields)
        return jobs

    def wait_for_jobs(self, timeout: float = 600, poll: float = 1.0) -> None:
        """Block until no job is pending, running or completing."""
        deadline = time.monotonic() + timeout
        while self.job_ids():
            if time.monotonic() > deadline:
                raise ClusterError(f'jobs still queued after {timeout:.0f} s:\n'
                                   + self.run(['squeue']).stdout)
            time.sleep(poll)

    # ------------------------------------------------------------------ internals
    def _configure(self) -> None:
        hw = _node_hardware()
        self.node = hw['NodeName']
        cpus = int(hw['CPUs'])
        # A little under what slurmd measures, or the node is drained as "Low RealMemory".
        memory = max(int(int(hw.get('RealMemory', 1024)) * 0.95), 256)
        ctld_port, slurmd_port = _free_ports(2)
        for sub in ('etc', 'log', 'run', 'state', 'spool'):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # munged runs as user munge: it must be able to reach its folder through root.
        self.root.chmod(0o755)
        r = self.root
        self.conf.write_text('\n'.join([
            '# single-node test cluster written by qsmflow tests/slurm_cluster.py',
            'ClusterName=qsmflowtest',
            f'SlurmctldHost={self.node}(127.0.0.1)',
            f'SlurmctldPort={ctld_port}',
            f'SlurmdPort={slurmd_port}',
            'SlurmUser=root',
            'SlurmdUser=root',
            'AuthType=auth/munge',
            'CredType=cred/munge',
            f'AuthInfo=socket={self.munge_dir / "munge.socket"}',
            f'StateSaveLocation={r / "state"}',
            f'SlurmdSpoolDir={r / "spool"}',
            f'SlurmctldPidFile={self.pid_files["slurmctld"]}',
            f'SlurmdPidFile={self.pid_files["slurmd"]}',
            f'SlurmctldLogFile={self.log_files["slurmctld"]}',
            f'SlurmdLogFile={self.log_files["slurmd"]}',
            'SlurmctldDebug=info',
            'SlurmdDebug=info',
            'ProctrackType=proctrack/linuxproc',
            'TaskPlugin=task/none',
            'JobAcctGatherType=jobacct_gather/none',
            'AccountingStorageType=accounting_storage/none',
            'JobCompType=jobcomp/none',
            'MpiDefault=none',
            'SwitchType=switch/none',
            'LaunchType=launch/slurm',
            'SchedulerType=sched/backfill',
            'SchedulerParameters=batch_sched_delay=0',
            'DependencyParameters=kill_invalid_depend',
            'SelectType=select/cons_tres',
            'SelectTypeParameters=CR_CPU_Memory',
            # Without a default, a job asking for no memory is given the whole node.
            f'DefMemPerCPU={max(memory // (2 * cpus), 128)}',
            'ReturnToService=2',
            'MailProg=/bin/true',
            'PlugStackConfig=' + str(r / 'etc' / 'plugstack.conf'),
            'SlurmctldTimeout=30',
            'SlurmdTimeout=30',
            'InactiveLimit=0',
            'KillWait=5',
            'MinJobAge=3600',
            'Waittime=0',
            (f'NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} '
             f'Boards={hw.get("Boards", 1)} SocketsPerBoard={hw.get("SocketsPerBoard", 1)} '
             f'CoresPerSocket={hw.get("CoresPerSocket", cpus)} '
             f'ThreadsPerCore={hw.get("ThreadsPerCore", 1)} RealMemory={memory} State=UNKNOWN'),
            f'PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP',
            '']))
        (r / 'etc' / 'plugstack.conf').write_text('')
        # slurmd loads a cgroup plugin even with proctrack/linuxproc + task/none: pin v1 and
        # point it at a mount point that does not exist, so it never touches the host's.
        (r / 'etc' / 'cgroup.conf').write_text(
            'CgroupPlugin=cgroup/v1\n'
            f'CgroupMountpoint={r / "no-cgroup"}\n'
            'ConstrainCores=no\nConstrainRAMSpace=no\nConstrainDevices=no\n')

    def _start_munge(self) -> None:
        munge = pwd.getpwnam('munge')
        self.munge_dir.mkdir(exist_ok=True)
        key = self.munge_dir / 'munge.key'
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)  # never readable by others
        try:
            os.write(fd, os.urandom(128))
        finally:
            os.close(fd)
        # The socket's folder must be searchable by all, writable by munge alone.
        for path, mode in ((self.munge_dir, 0o755), (key, 0o400)):
            os.chown(path, munge.pw_uid, munge.pw_gid)
            path.chmod(mode)
        args = [_which('munged'), f'--key-file={key}',
                f'--socket={self.munge_dir / "munge.socket"}',
                f'--pid-file={self.pid_files["munged"]}',
                f'--log-file={self.log_files["munged"]}',
                f'--seed-file={self.munge_dir / "munged.seed"}', '--num-threads=2']
        proc = _call(args, 30, user=munge.pw_uid, group=munge.pw_gid, extra_groups=[],
                     cwd=self.munge_dir)
        if proc.returncode != 0:
            raise ClusterError(f'munged failed to start (exit {proc.returncode}): '
                               f'{(proc.stdout + proc.stderr).strip()}\n'
                               f'{_log_tail(self.log_files["munged"])}')
        self._wait(lambda: (self.munge_dir / 'munge.socket').exists(), 15,
                   'munged socket did not appear', 'munged')

    def _start_daemon(self, name: str, extra: list[str]) -> None:
        proc = _call([_which(name), *extra], env=self.env, cwd=self.root)
        if proc.returncode != 0:
            raise ClusterError(f'{name} failed to start (exit {proc.returncode}): '
                               f'{(proc.stdout + proc.stderr).strip()}\n'
                               f'{name} log ({self.log_files[name]}):\n'
                               f'{_log_tail(self.log_files[name])}')
        self._wait(lambda: self._pid(name) is not None, 15, 'no PID file written', name)

    def _controller_answers(self) -> bool:
        proc = _call(['scontrol', 'ping'], 30, env=self.env)
        return proc.returncode == 0 and 'UP' in proc.stdout

    def _node_idle(self) -> bool:
        proc = _call(['sinfo', '--noheader', '--Node', '--format=%N %t'], 30, env=self.env)
        states = dict(line.split() for line in proc.stdout.splitlines() if line.strip())
        state = states.get(self.node, '')
        if state.startswith(('drain', 'drng', 'fail')):
            reason = _call(['sinfo', '--noheader', '--list-reasons'], 30, env=self.env).stdout
            raise ClusterError(f'node {self.node} is {state}: {reason.strip()}\n'
                               f'slurmd log:\n{_log_tail(self.log_files["slurmd"])}')
        return state == 'idle'

    def _wait(self, ready, timeout: float, what: str, daemon: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            pid = self._pid(daemon)
            if pid is not None and not pid_alive(pid):
                raise ClusterError(f'{daemon} died: {what}\n{daemon} log '
                                   f'({self.log_files[daemon]}):\n'
                                   f'{_log_tail(self.log_files[daemon])}')
            if time.monotonic() > deadline:
                raise ClusterError(f'{daemon}: {what} after {timeout:.0f} s\n{daemon} log '
                                   f'({self.log_files[daemon]}):\n'
                                   f'{_log_tail(self.log_files[daemon])}')
            time.sleep(0.2)

    @staticmethod
    def _wait_quiet(ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except (ClusterError, OSError, subprocess.SubprocessError):
                return
            time.sleep(0.5)

    def daemon_pids(self) -> dict[str, int | None]:
        """``{daemon: PID}`` from the PID files (``None`` where there is none)."""
        return {name: self._pid(name) for name in self.pid_files}

    def _pid(self, name: str) -> int | None:
        try:
            return int(self.pid_files[name].read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def _terminate(pid: int, timeout: float) -> None:
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not pid_alive(pid):
                return
