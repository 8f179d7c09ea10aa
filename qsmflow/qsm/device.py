# SPDX-License-Identifier: Apache-2.0
"""Where the FFT-bound steps compute: numpy/scipy.fft on the CPU, or torch on a GPU.

The steps that accept ``device=`` (PDF, V-SHARP, RESHARP, TKD, Tikhonov, TV, RTS) keep
their numpy code for ``'cpu'`` and hand the heavy loop to a torch twin
(``qsm/_torch_ops.py``, ``qsm/bgremove/_bg_torch.py``, ``qsm/inversion/_tv_torch.py``) for
a torch device; arrays go in and come back as numpy float32 either way. torch is optional
(``pip install qsmflow[gpu]``): nothing imports it unless a torch device is asked for.

Device names (:data:`DEVICES`): ``'cpu'`` numpy (the default; bitwise as before),
``'gpu'`` torch on CUDA (an error when there is none), ``'auto'`` CUDA when torch sees
one, else numpy. ``'torch-cpu'`` runs the torch code on torch's CPU device: the same
arithmetic as on the GPU, for tests and comparisons on machines without one.
"""

from __future__ import annotations

import inspect

import numpy as np

#: The choices of ``--device``.
DEVICES = ('cpu', 'gpu', 'auto')
#: Every name :func:`resolve` accepts (``'torch-cpu'``: the torch code on the CPU).
NAMES = DEVICES + ('torch-cpu',)


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def cuda_available() -> bool:
    """Whether torch is importable and sees a CUDA device."""
    torch = _torch()
    return bool(torch is not None and torch.cuda.is_available())


def resolve(device='cpu') -> str | None:
    """The torch device a step runs on for ``device``, or None for the numpy code.

    Parameters
    ----------
    device : str
        One of :data:`NAMES`.

    Returns
    -------
    str or None
        ``'cuda'`` or ``'cpu'`` (torch device names), None for numpy.

    Raises
    ------
    ValueError
        (a one-line message) for ``'gpu'`` without torch or without a CUDA device, for
        ``'torch-cpu'`` without torch, and for an unknown name.

    Examples
    --------
    >>> resolve('cpu') is None
    True
    """
    if device not in NAMES:
        raise ValueError(f'--device must be one of {", ".join(DEVICES)}, got {device!r}')
    if device == 'cpu':
        return None
    torch = _torch()
    if device == 'auto':
        return 'cuda' if torch is not None and torch.cuda.is_available() else None
    if torch is None:
        raise ValueError(f'--device {device} needs torch, which is not installed '
                         "(pip install 'qsmflow[gpu]'), or use --device cpu")
    if device == 'torch-cpu':
        return 'cpu'
    if not torch.cuda.is_available():
        raise ValueError('--device gpu: torch sees no CUDA device on this machine '
                         '(use --device cpu or auto)')
    return 'cuda'


def used(device='cpu') -> str:
    """The name recorded in sidecars for ``device``: ``'cpu'``, ``'gpu'`` or
    ``'torch-cpu'`` (``'auto'`` resolved)."""
    dev = resolve(device)
    return 'cpu' if dev is None else ('gpu' if dev == 'cuda' else 'torch-cpu')


def torch_version() -> str | None:
    """torch's version, or None when it is not installed."""
    torch = _torch()
    return None if torch is None else torch.__version__


def step_kwargs(func, device='cpu') -> dict:
    """Keyword arguments that run step ``func`` on ``device``: ``{'device': name}`` with the
    name :func:`used` gives (what provenance records), or ``{}`` for a step without a
    ``device`` parameter (it runs in numpy whatever was asked).

    Examples
    --------
    >>> from qsmflow.qsm.inversion import medi, tv
    >>> step_kwargs(tv, 'cpu'), step_kwargs(medi, 'auto')
    ({'device': 'cpu'}, {})
    """
    if 'device' not in inspect.signature(func).parameters:
        return {}
    return {'device': used(device)}


def tensor(array, dev, dtype=None):
    """``array`` (numpy) as a torch tensor on ``dev`` (float32 unless ``dtype``)."""
    torch = _torch()
    array = np.ascontiguousarray(array)
    if dtype is None and array.dtype.kind == 'f':
        array = array.astype(np.float32, copy=False)
    return torch.from_numpy(array).to(dev)


def numpy32(t) -> np.ndarray:
    """A torch tensor back as a numpy float32 array."""
    return t.detach().to('cpu').float().numpy()
