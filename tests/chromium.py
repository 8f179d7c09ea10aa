# SPDX-License-Identifier: Apache-2.0
"""Headless Chromium for tests: open a page, collect console errors, check images, screenshot.

Debian's ``chromium`` is installed with ``apt-get`` when missing (root only, as CI runs;
``QSMFLOW_TEST_CHROMIUM=0`` skips instead), the way ``tests/slurm_cluster.py`` installs
SLURM. The browser is driven over the DevTools
protocol on a pipe (``--remote-debugging-pipe``: JSON messages ending in a NUL byte on
file descriptors 3 and 4), so no Python browser package or network port is needed.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGE = 'chromium'
#: Checks every ``<img>`` and ``<object>`` of the page: loaded, and drawn with a size.
_IMAGES_JS = r'''
(() => {
  const out = [];
  for (const img of document.images) {
    out.push({kind: 'img', src: img.getAttribute('src'), ok: img.complete && img.naturalWidth > 0,
              width: img.naturalWidth});
  }
  for (const obj of document.querySelectorAll('object')) {
    const doc = obj.contentDocument;
    const root = doc && doc.documentElement;
    const ok = !!root && root.nodeName.toLowerCase() === 'svg'
               && obj.getBoundingClientRect().height > 10;
    out.push({kind: 'object', src: obj.getAttribute('data'), ok: ok,
              width: obj.getBoundingClientRect().width});
  }
  return JSON.stringify(out);
})()
'''


class BrowserError(RuntimeError):
    """Chromium could not be installed or driven."""


def executable() -> str | None:
    return shutil.which('chromium') or shutil.which('chromium-browser')


def unavailable_reason() -> str | None:
    """Why Chromium cannot be used here (None when it can, possibly after installing);
    ``QSMFLOW_TEST_CHROMIUM=0`` opts out (no apt-get install on a developer's machine)."""
    if os.environ.get('QSMFLOW_TEST_CHROMIUM') == '0':
        return 'QSMFLOW_TEST_CHROMIUM=0'
    if executable():
        return None
    if os.geteuid() != 0:
        return 'chromium is not installed and installing it with apt-get needs root'
    if shutil.which('apt-get') is None:
        return 'chromium is not installed and there is no apt-get to install it'
    return None


def install(timeout: float = 900) -> str:
    """``apt-get install chromium`` when missing; the executable."""
    if executable():
        return executable()
    env = {**os.environ, 'DEBIAN_FRONTEND': 'noninteractive'}
    cmd = ['apt-get', 'install', '-y', '--no-install-recommends', PACKAGE]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        subprocess.run(['apt-get', 'update'], capture_output=True, timeout=timeout, env=env)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0 or not executable():
        raise BrowserError(f'{" ".join(cmd)} failed (exit {proc.returncode}): '
                           f'{(proc.stdout + proc.stderr)[-2000:]}')
    return executable()


class Page:
    """One headless Chromium with one page, driven over the DevTools pipe."""

    def __init__(self, timeout: float = 60):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix='qsmflow-chromium-')
        to_browser_r, self._w = os.pipe()
        self._r, from_browser_w = os.pipe()
        # the browser reads commands on fd 3 and writes replies on fd 4: the pipe ends are
        # moved above 9 here and to 3/4 by a shell in the child
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 20) for fd in (to_browser_r, from_browser_w)]
        os.close(to_browser_r)
        os.close(from_browser_w)
        cmd = [install(), '--headless=new', '--no-sandbox', '--disable-gpu',
               '--disable-dev-shm-usage', '--no-first-run', '--remote-debugging-pipe',
               '--allow-file-access-from-files',
               f'--user-data-dir={self.profile}', '--window-size=1200,2000', 'about:blank']
        shell = f'exec 3<&{high[0]} 4>&{high[1]} {high[0]}<&- {high[1]}>&-; exec "$@"'
        self.proc = subprocess.Popen([shutil.which('bash') or '/bin/bash', '-c', shell, 'sh',
                                      *cmd], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, pass_fds=tuple(high))
        for fd in high:
            os.close(fd)
        self._buf, self._id, self.events = b'', 0, []
        target = self.call('Target.createTarget', url='about:blank')['targetId']
        self.session = self.call('Target.attachToTarget', targetId=target,
                                 flatten=True)['sessionId']
        for domain in ('Page', 'Runtime', 'Log'):
            self.call(f'{domain}.enable', session=True)

    # -- protocol -------------------------------------------------------------------------
    def _read(self) -> dict:
        deadline = time.time() + self.timeout
        while b'\0' not in self._buf:
            if time.time() > deadline:
                raise BrowserError('no answer from chromium')
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                raise BrowserError('chromium closed the pipe')
            self._buf += chunk
        msg, self._buf = self._buf.split(b'\0', 1)
        return json.loads(msg)

    def call(self, method: str, session: bool = False, **params) -> dict:
        self._id += 1
        msg = {'id': self._id, 'method': method, 'params': params}
        if session:
            msg['sessionId'] = self.session
        os.write(self._w, json.dumps(msg).encode() + b'\0')
        while True:
            reply = self._read()
            if reply.get('id') == self._id:
                if 'error' in reply:
                    raise BrowserError(f'{method}: {reply["error"]}')
                return reply.get('result', {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while not any(e.get('method') == method for e in self.events):
            if time.time() > deadline:
                raise BrowserError(f'timed out waiting for {method}')
            self.events.append(self._read())

    # -- what the tests use ---------------------------------------------------------------
    def open(self, path: Path) -> None:
        self.events.clear()
        self.call('Page.navigate', session=True, url=Path(path).absolute().as_uri())
        self.wait_for('Page.loadEventFired')

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads since :meth:`open`."""
        out = []
        for event in self.events:
            method, params = event.get('method'), event.get('params', {})
            if method == 'Runtime.exceptionThrown':
                out.append(str(params.get('exceptionDetails', {}).get('text')))
            elif method == 'Runtime.consoleAPICalled' and params.get('type') == 'error':
                out.append(' '.join(str(a.get('value')) for a in params.get('args', [])))
            elif method == 'Log.entryAdded' and params.get('entry', {}).get('level') == 'error':
                entry = params['entry']
                out.append(f'{entry.get("text")} {entry.get("url", "")}')
        return out

    def images(self) -> list[dict]:
        """``{kind, src, ok, width}`` of every ``<img>`` and ``<object>`` on the page."""
        res = self.call('Runtime.evaluate', session=True, expression=_IMAGES_JS,
                        returnByValue=True)
        return json.loads(res['result']['value'])

    def text(self) -> str:
        res = self.call('Runtime.evaluate', session=True,
                        expression='document.body.innerText', returnByValue=True)
        return res['result']['value']

    def screenshot(self, out: Path, full_page: bool = True) -> Path:
        params = {'format': 'png'}
        if full_page:
            metrics = self.call('Page.getLayoutMetrics', session=True)
            size = metrics.get('cssContentSize') or metrics['contentSize']
            params.update(captureBeyondViewport=True, clip={
                'x': 0, 'y': 0, 'width': size['width'], 'height': size['height'], 'scale': 1})
        data = self.call('Page.captureScreenshot', session=True, **params)['data']
        Path(out).write_bytes(base64.b64decode(data))
        return Path(out)

    def close(self) -> None:
        try:
            self.call('Browser.close')
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)
