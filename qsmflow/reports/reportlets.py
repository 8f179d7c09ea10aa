# SPDX-License-Identifier: Apache-2.0
"""Reportlets of one acquisition: small PNG mosaics and an SVG registration flicker.

Every panel is drawn with matplotlib on the image's closest-canonical (RAS) orientation,
anterior/superior up: mosaics with fixed, documented windows and a colour bar, mask and
label outlines as contours, saved as 8-bit palette PNG (a few kB each). The registration
check is nireports' flicker (:func:`nireports.reportlets.utils.compose_view`, the
fMRIPrep reportlet): two SVG panels, the registered magnitude and the template, each with
the template's brain-mask outline, alternating on hover. nireports' own mosaic functions
(nilearn, rasters at 300 dpi) took 5× as long and were 20-30× larger on the demo.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

#: Display windows (ppm) of the mosaics: fixed, so that reports of different runs compare.
WINDOWS_PPM = {
    'totalfield': (-0.5, 0.5),
    'localfield': (-0.05, 0.05),
    'noise': (0.0, 0.01),
    'chi': (-0.1, 0.2),
}
#: Captions of the reportlets (the participant report shows them under each figure).
CAPTIONS = {
    'mask': 'Combined magnitude (root sum of squares over echoes) with the brain-mask '
            'outline (red) and the outline of the final mask of chi (blue: after phase-quality '
            'trimming and background-removal erosion); what lies between them was excluded.',
    'totalfield': 'Total field from the multi-echo fit, window {totalfield} ppm.',
    'localfield': 'Local field after background removal, window {localfield} ppm.',
    'noise': 'Standard error of the total field (phase reliability; larger = less reliable), '
             'window {noise} ppm.',
    'chi': 'Susceptibility chi, window {chi} ppm.',
    'chitriplet': 'Chi through the centre of the deep grey-matter nuclei (axial, coronal, '
                  'sagittal), window {chi} ppm.',
    'registration': 'Registration check: the brain-masked magnitude resampled to the template '
                    'with the template brain-mask outline (red); hover to flicker to the '
                    'template with the same outline.',
    'atlas': 'Atlas labels (coloured outlines) brought to the native grid, over chi '
             '(window {chi} ppm).',
}
#: Order of the reportlets in a report.
ORDER = ('mask', 'totalfield', 'localfield', 'noise', 'chi', 'chitriplet', 'registration',
         'atlas')


def caption(name: str) -> str:
    """Caption of reportlet ``name`` with its window filled in.

    >>> caption('chi')
    'Susceptibility chi, window [-0.1, 0.2] ppm.'
    """
    windows = {k: f'[{lo:g}, {hi:g}]' for k, (lo, hi) in WINDOWS_PPM.items()}
    return CAPTIONS[name].format(**windows)


def acquisition_reportlets(out_dir, *, magnitude, brain_mask, mask, total_field, local_field,
                           noise, chimap, in_registered=None, template=None,
                           template_mask=None, in_dseg=None, in_lut=None) -> list[str]:
    """Write every reportlet of one acquisition into ``out_dir``; return their paths.

    Files are named ``<reportlet>.<png|svg>`` (the name becomes the ``desc`` entity).
    """
    import nibabel as nb

    out_dir = Path(out_dir)
    mag_img = nb.load(magnitude)
    mag = np.asarray(mag_img.dataobj, dtype=np.float32)
    rss = np.sqrt(np.sum(np.square(mag, dtype=np.float64), axis=-1)) if mag.ndim == 4 else mag
    ref = nb.Nifti1Image(rss.astype(np.float32), mag_img.affine)
    canon = _canonical(ref)

    def load(path, dtype=np.float32):
        img = nb.as_closest_canonical(nb.Nifti1Image(
            np.asarray(nb.load(path).dataobj, dtype=dtype).reshape(rss.shape), mag_img.affine))
        return np.nan_to_num(np.asarray(img.dataobj, dtype=dtype))

    rss_c, zooms = canon
    brain, final = load(brain_mask) > 0, load(mask) > 0
    hi = float(np.percentile(rss_c[brain], 99)) if brain.any() else float(rss_c.max())
    out = [mosaic_png(rss_c, brain, (0.0, hi), out_dir / 'mask.png', zooms=zooms,
                      contours=((brain, 'r'), (final, 'b')), label='a.u.')]
    chi = load(chimap)
    for name, path, cmap in (('totalfield', total_field, 'RdBu_r'),
                             ('localfield', local_field, 'RdBu_r'),
                             ('noise', noise, 'magma'), ('chi', chimap, 'gray')):
        data = chi if name == 'chi' else load(path)
        out.append(mosaic_png(data, final, WINDOWS_PPM[name], out_dir / f'{name}.png',
                              zooms=zooms, cmap=cmap, label='ppm'))
    labels = lut = None
    if in_dseg:
        from qsmflow.interfaces.regions import read_lut

        labels = load(in_dseg, np.int32)
        lut = read_lut(in_lut) if in_lut else {int(i): str(i) for i in np.unique(labels) if i}
    out.append(triplet_png(chi, final, zooms, labels, lut, out_dir / 'chitriplet.png'))
    if in_registered and template and template_mask:
        out.append(registration_svg(in_registered, template, template_mask,
                                    out_dir / 'registration.svg'))
    if labels is not None:
        out.append(atlas_png(chi, labels, lut, zooms, out_dir / 'atlas.png'))
    return [str(p) for p in out]


def _canonical(img):
    """``(data, zooms)`` of ``img`` in its closest canonical (RAS) orientation."""
    import nibabel as nb

    can = nb.as_closest_canonical(img)
    return np.asarray(can.dataobj, dtype=np.float32), tuple(can.header.get_zooms()[:3])


def _bbox_slices(mask, axis: int, n: int) -> list[int]:
    """``n`` evenly spaced slice indices along ``axis`` through the mask's extent.

    >>> m = np.zeros((4, 4, 20), bool); m[:, :, 5:15] = True
    >>> _bbox_slices(m, 2, 3)
    [7, 10, 12]
    """
    other = tuple(a for a in range(3) if a != axis)
    present = np.flatnonzero(mask.any(axis=other))
    if present.size == 0:
        present = np.arange(mask.shape[axis])
    lo, hi = int(present[0]), int(present[-1])
    return sorted({int(round(v)) for v in np.linspace(lo, hi, n + 2)[1:-1]})


def _plane(vol, axis: int, k: int):
    """Slice ``k`` along ``axis`` of a RAS volume, transposed for display (up = +)."""
    return np.take(vol, k, axis=axis).T


def _aspect(zooms, axis: int) -> float:
    """Pixel aspect (height / width in mm) of a slice along ``axis``."""
    rows, cols = [z for a, z in enumerate(zooms) if a != axis][::-1]
    return rows / cols


def _draw(ax, vol, axis, k, window, cmap, zooms, contours=(), crop=None):
    plane = _plane(vol, axis, k)
    extent = None
    shown = ax.imshow(plane, cmap=cmap, vmin=window[0], vmax=window[1], origin='lower',
                      interpolation='nearest', aspect=_aspect(zooms, axis), extent=extent)
    for mask, color in contours:
        m = _plane(mask, axis, k).astype(float)
        if m.any() and not m.all():
            ax.contour(m, levels=[0.5], colors=color, linewidths=0.6)
    if crop is not None:
        ax.set_xlim(crop[0]), ax.set_ylim(crop[1])
    ax.set_axis_off()
    return shown


def _crop(mask, axis: int, margin: int = 2):
    """Display limits (x, y) of the slices along ``axis`` around ``mask``."""
    other = [a for a in range(3) if a != axis]
    if not mask.any():
        return None
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - margin, 0) - 0.5
    hi = idx.max(axis=0) + margin + 0.5
    return (lo[other[0]], hi[other[0]]), (lo[other[1]], hi[other[1]])


def mosaic_png(data, mask, window, out_file, *, zooms=(1, 1, 1), cmap='gray', label='',
               contours=(), n: int = 8) -> Path:
    """Axial mosaic of ``data`` (``n`` slices through ``mask``), fixed window, colour bar."""
    fig, axes = _figure(1, n, (1.3 * n + 0.6, 1.8))
    crop = _crop(mask, 2)
    for ax, k in zip(axes[0], _bbox_slices(mask, 2, n)):
        shown = _draw(ax, data, 2, k, window, cmap, zooms, contours, crop)
    for ax in axes[0][len(_bbox_slices(mask, 2, n)):]:
        ax.set_axis_off()
    _colorbar(fig, shown, axes[0], label)
    return _save_png(fig, out_file)


def triplet_png(chi, mask, zooms, labels, lut, out_file) -> Path:
    """Axial, coronal and sagittal χ through the centroid of the deep nuclei (labels named
    as a deep nucleus; without labels, the centre of the mask)."""
    from qsmflow.qsm.region_names import is_deep_nucleus

    where = mask
    if labels is not None:
        sel = np.isin(labels, [i for i, name in lut.items() if is_deep_nucleus(name)])
        where = sel if sel.any() else mask
    centre = ([int(round(c)) for c in np.argwhere(where).mean(axis=0)] if where.any()
              else [s // 2 for s in chi.shape])
    fig, axes = _figure(1, 3, (6.0, 2.3))
    for ax, axis, title in zip(axes[0], (2, 1, 0), ('axial', 'coronal', 'sagittal')):
        shown = _draw(ax, chi, axis, centre[axis], WINDOWS_PPM['chi'], 'gray', zooms,
                      crop=_crop(mask, axis))
        ax.set_title(title, fontsize=7)
    _colorbar(fig, shown, axes[0], 'ppm')
    return _save_png(fig, out_file)


def atlas_png(chi, labels, lut, zooms, out_file, n: int = 6) -> Path:
    """Outlines of every atlas label over χ, axial slices through the labels."""
    import matplotlib

    cmap = matplotlib.colormaps['tab20']
    ids = [int(i) for i in np.unique(labels) if i]
    contours = [(labels == i, cmap(j % 20)) for j, i in enumerate(ids)]
    anywhere = labels > 0
    fig, axes = _figure(1, n, (1.6 * n + 0.6, 2.0))
    slices = _bbox_slices(anywhere, 2, n)
    for ax, k in zip(axes[0], slices):
        shown = _draw(ax, chi, 2, k, WINDOWS_PPM['chi'], 'gray', zooms, contours,
                      _crop(anywhere, 2, margin=8))
    for ax in axes[0][len(slices):]:
        ax.set_axis_off()
    _colorbar(fig, shown, axes[0], 'ppm')
    return _save_png(fig, out_file)


def registration_svg(moved, template, template_mask, out_file) -> Path:
    """nireports flicker of the registered magnitude and the template (SVG, hover)."""
    import nibabel as nb
    from nireports.reportlets.utils import compose_view

    tpl, zooms = _canonical(nb.load(template))
    tmask = _canonical(nb.load(template_mask))[0].reshape(tpl.shape) > 0
    mov = _canonical(nb.load(moved))[0].reshape(tpl.shape)
    panels = []
    for vol, label in ((mov, 'registered magnitude'), (tpl, 'template')):
        hi = float(np.percentile(vol[tmask], 99)) if tmask.any() else float(vol.max())
        fig, axes = _figure(3, 4, (6.4, 5.0))
        for row, axis in zip(axes, (2, 1, 0)):
            for ax, k in zip(row, _bbox_slices(tmask, axis, 4)):
                _draw(ax, vol, axis, k, (0.0, hi), 'gray', zooms, ((tmask, 'r'),),
                      _crop(tmask, axis))
        fig.suptitle(label, fontsize=8, color='w')
        panels.append(_svg_figure(fig))
    compose_view([panels[0]], [panels[1]], out_file=out_file)
    # compose_view names the animation with a random uuid: a fixed name keeps reruns
    # byte-identical (the outputs are compared bit for bit)
    text = re.sub(r'flickerAnimation[0-9a-f-]{36}', 'flickerAnimationQSM',
                  Path(out_file).read_text())
    Path(out_file).write_text(text)
    return Path(out_file)


def _figure(rows: int, cols: int, size):
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False, facecolor='k')
    fig.subplots_adjust(left=0.01, right=0.92, top=0.9, bottom=0.02, wspace=0.03,
                        hspace=0.05)
    return fig, axes


def _colorbar(fig, shown, axes, label: str) -> None:
    cbar = fig.colorbar(shown, ax=list(axes), fraction=0.015, pad=0.01)
    cbar.set_label(label, fontsize=7, color='w')
    cbar.ax.tick_params(labelsize=6, colors='w')


def _save_png(fig, out_file) -> Path:
    """Save as an optimised 8-bit palette PNG (the report stays light)."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=100, facecolor='k', metadata={'Software': None})
    plt.close(fig)
    buf.seek(0)
    Image.open(buf).convert('RGB').quantize(colors=128).save(out_file, optimize=True)
    return Path(out_file)


def _svg_figure(fig):
    """A matplotlib figure as a nireports (svgutils) SVG figure with a viewBox."""
    import io

    import matplotlib
    import matplotlib.pyplot as plt
    from nireports._vendored.svgutils.transform import fromstring

    buf = io.StringIO()
    with matplotlib.rc_context({'svg.hashsalt': 'qsmflow'}):  # ids fixed: reruns identical
        fig.savefig(buf, format='svg', dpi=80, facecolor='k', metadata={'Date': None})
    plt.close(fig)
    return fromstring(buf.getvalue())
