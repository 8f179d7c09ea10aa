# SPDX-License-Identifier: Apache-2.0
"""Forward-simulated brain-like data for the background-removal and inversion tests.

The phantom is built in mm, so the same anatomy can be rasterised at any grid: an
ellipsoidal brain with a cortical rim, white matter, ventricles, bilateral ellipsoidal deep
grey-matter "nuclei" of known χ (0.02–0.17 ppm), two vein-like tubes and a calcification;
around it air (sinus, ear canals, outside the head) makes a harmonic background field.
Fields are simulated with the dipole kernel on a grid padded to twice the image size (so
that the simulation is not the periodic model the inversions use).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from qsmflow.qsm.kernels import (
    crop_from,
    dipole_kernel,
    irfft,
    pad_to,
    padded_shape,
    rfft,
)

#: (label, name, centre mm, semi-axes mm, χ ppm); bilateral entries are mirrored in x.
NUCLEI = (
    (1, 'caudate', (13, 12, 12), (4, 10, 6), 0.07),
    (3, 'putamen', (25, 2, 2), (5, 12, 8), 0.06),
    (5, 'pallidum', (18, -2, 0), (3.5, 6, 5), 0.17),
    (7, 'thalamus', (10, -18, 6), (6, 10, 7), 0.02),
    (9, 'nigra', (10, -18, -16), (3.5, 6, 3), 0.15),
    (11, 'red_nucleus', (5, -22, -9), (3, 3, 3), 0.11),
    (13, 'dentate', (15, -50, -30), (5, 6, 4), 0.12),
)
DEEP_GM_IDS = tuple(lab + side for lab, *_ in NUCLEI for side in (0, 1))
CSF, VEIN, CALC, WM, CORTEX = 40, 20, 30, 50, 51
CHI_AIR = 9.4
BRAIN_SEMI_MM = (62, 78, 56)


def _ellipsoid(x, y, z, centre, semi):
    return (
        ((x - centre[0]) / semi[0]) ** 2
        + ((y - centre[1]) / semi[1]) ** 2
        + ((z - centre[2]) / semi[2]) ** 2
    )


def _tube(x, y, z, p0, p1, radius):
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    t = ((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / (d @ d)
    t = np.clip(t, 0, 1)
    return (x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (
        z - p0[2] - t * d[2]
    ) ** 2 <= radius**2


def forward_field(chi, voxel_size, b0_dir=(0, 0, 1)):
    """Field (ppm) of ``chi`` (ppm), simulated on a grid padded to twice the size."""
    shape = padded_shape(chi.shape, [n // 2 for n in chi.shape])
    big = pad_to(chi.astype(np.float64), shape)
    d = dipole_kernel(shape, voxel_size, b0_dir, dtype=np.float64)
    return crop_from(irfft(rfft(big) * d, shape), chi.shape)


def make_brain(shape=(72, 88, 72), voxel_size=(2.0, 2.0, 2.0), b0_dir=(0, 0, 1), *,
               noise_ppm=0.0, texture=True, seed=0):
    """Brain-like phantom (dict of arrays); coordinates in mm, centred on the grid."""
    vs = np.asarray(voxel_size, float)
    x, y, z = (
        (np.arange(n) - (n - 1) / 2) * h
        for n, h in zip(shape, vs)
    )
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    rng = np.random.default_rng(seed)
    lev = _ellipsoid(x, y, z, (0, 0, 0), BRAIN_SEMI_MM)
    mask = lev <= 1
    labels = np.zeros(shape, np.int16)
    labels[mask] = WM
    labels[mask & (lev > 0.86)] = CORTEX
    for sx in (-1, 1):
        labels[_ellipsoid(x, y, z, (sx * 6, 5, 15), (4, 18, 6)) <= 1] = CSF
    for lab, _, c, s, _ in NUCLEI:
        for side, sx in enumerate((-1, 1)):
            labels[_ellipsoid(x, y, z, (sx * c[0], c[1], c[2]), s) <= 1] = lab + side
    labels[_tube(x, y, z, (0, -55, 40), (0, 50, 40), 2.0) & mask] = VEIN
    labels[_tube(x, y, z, (0, -35, 20), (0, -5, 12), 1.5) & mask] = VEIN
    labels[_ellipsoid(x, y, z, (30, -30, 22), (3, 3, 3)) <= 1] = CALC
    values = {WM: -0.02, CORTEX: 0.02, CSF: 0.0, VEIN: 0.35, CALC: -0.3}
    values.update({lab + side: v for lab, *_, v in NUCLEI for side in (0, 1)})
    lut = np.zeros(labels.max() + 1)
    for k, v in values.items():
        lut[k] = v
    chi = lut[labels]
    if texture:
        tex = ndi.gaussian_filter(rng.standard_normal(shape), 3.0 / vs)
        chi += 0.005 * tex / tex.std() * np.isin(labels, (WM, CORTEX))
    chi[~mask] = 0
    # background: air outside the head, in a sinus and in the ear canals
    head = _ellipsoid(x, y, z, (0, 0, -5), (72, 92, 80)) <= 1
    air = ~head
    air |= _ellipsoid(x, y, z, (0, 58, -50), (14, 10, 8)) <= 1
    for sx in (-1, 1):
        air |= _ellipsoid(x, y, z, (sx * 68, 0, -32), (6, 6, 6)) <= 1
    air &= ~ndi.binary_dilation(mask, iterations=2)
    chi_bg = CHI_AIR * air
    local = forward_field(chi, vs, b0_dir)
    background = forward_field(chi_bg, vs, b0_dir)
    noise = noise_ppm * rng.standard_normal(shape) if noise_ppm else np.zeros(shape)
    total = local + background + noise
    return {
        'chi': chi.astype(np.float32),
        'mask': mask,
        'labels': labels,
        'local': (local * mask).astype(np.float32),
        'background': (background * mask).astype(np.float32),
        'total': (total * mask).astype(np.float32),
        'local_noisy': ((local + noise) * mask).astype(np.float32),
        'voxel_size': tuple(vs),
        'b0_dir': tuple(np.asarray(b0_dir, float) / np.linalg.norm(b0_dir)),
    }


@pytest.fixture(scope='session')
def brain():
    """2 mm brain phantom, B0 along z, noise-free."""
    return make_brain()


@pytest.fixture(scope='session')
def brain_noisy():
    """2 mm brain phantom, B0 along z, with 0.01 ppm Gaussian noise on the total field."""
    return make_brain(noise_ppm=0.01, seed=1)


@pytest.fixture(scope='session')
def simulate_field():
    """The forward model ``forward_field(chi_ppm, voxel_size_mm, b0_dir) -> field_ppm``."""
    return forward_field


@pytest.fixture(scope='session')
def brain_factory():
    """:func:`make_brain`, to build variants (e.g. an oblique B0)."""
    return make_brain


@pytest.fixture(scope='session')
def deep_gm_ids():
    """Labels of the deep grey-matter nuclei of the phantom."""
    return DEEP_GM_IDS
