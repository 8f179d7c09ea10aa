# SPDX-License-Identifier: Apache-2.0
"""Clinical variant of the head phantom: foci beside veins and in deep grey matter, and
veins of known oxygen saturation.

:func:`make_clinical_head` is :func:`qsmflow.phantom.head.make_head` with
:func:`clinical_anatomy`: the default anatomy (its haemorrhage, calcification and
sinuses stay) plus

* four white-matter veins of 2, 2.5, 3 and 4 mm diameter at several angles to B0
  (:data:`CLINICAL_VEINS`), every vein's χ set from a known venous saturation Y and
  haematocrit: χ_vein = χ_WM + Δχ_do · Hct · (1 − Y)
  (:func:`qsmflow.qsm.oef.delta_chi_from_saturation`; the sinuses of the default
  anatomy take the same χ);
* six foci of 2–8 mm diameter (:data:`CLINICAL_FOCI`): haemorrhage-like (χ 0.80 ppm) and
  calcification-like (χ −0.50 ppm, the tissue table's), three of them 0.5 mm from a vein,
  three in the putamen, the globus pallidus and the thalamus.

The default phantom (``make_head()`` without ``items``) is unchanged, so the demo data
and their checksums are too.
"""

from __future__ import annotations

from .geometry import Capsule, Superellipsoid
from .head import AC_MM, anatomy, make_head
from .tissues import LABEL_INDEX, white_matter_chi_ppm

#: Venous oxygen saturation (fraction) and haematocrit of the phantom's veins.
DEFAULT_SATURATION, DEFAULT_HEMATOCRIT = 0.65, 0.40

#: White-matter veins: (name, start mm, end mm, radius mm).
CLINICAL_VEINS = (
    ('vein_wm_left', (-30.0, -20.0, 32.0), (-30.0, 25.0, 32.0), 1.0),     # ⟂ B0
    ('vein_wm_right', (25.0, -25.0, 30.0), (25.0, 20.0, 38.0), 1.5),      # ≈ ⟂ B0
    ('vein_wm_oblique', (-14.0, -36.0, 22.0), (-12.0, 4.0, 42.0), 2.0),   # 27° from ⟂
    ('vein_wm_axial', (32.0, -6.0, 8.0), (32.0, -6.0, 30.0), 1.25),       # ∥ B0
)

#: Foci: (name, kind, centre mm, radius mm).
CLINICAL_FOCI = (
    ('haem_by_left_vein', 'haemorrhage', (-26.0, 0.0, 32.0), 2.5),
    ('haem_by_right_vein', 'haemorrhage', (31.0, 0.0, 34.4), 4.0),
    ('haem_putamen', 'haemorrhage', (-25.0, 13.0, -4.0), 1.5),
    ('calc_pallidum', 'calcification', (19.0, 7.0, -6.0), 1.5),
    ('calc_thalamus', 'calcification', (-10.0, -7.0, 2.0), 2.0),
    ('calc_by_axial_vein', 'calcification', (27.75, -6.0, 20.0), 1.0),
)
assert AC_MM == (0.0, 10.0, -4.0)  # the deep-GM foci above sit in nuclei placed from AC


def clinical_anatomy():
    """The default anatomy plus :data:`CLINICAL_VEINS` and :data:`CLINICAL_FOCI`."""
    items = list(anatomy())
    items += [(LABEL_INDEX['vein'], Capsule(a, b, r), None) for _, a, b, r in CLINICAL_VEINS]
    items += [(LABEL_INDEX[kind], Superellipsoid(c, (r, r, r)), None)
              for _, kind, c, r in CLINICAL_FOCI]
    return items


def vein_chi_ppm(age_years: float = 40.0, *, saturation: float = DEFAULT_SATURATION,
                 hematocrit: float = DEFAULT_HEMATOCRIT) -> float:
    """χ (ppm) of the phantom's venous blood: white matter's plus Δχ_do · Hct · (1 − Y).

    Examples
    --------
    >>> round(vein_chi_ppm(40.0) - white_matter_chi_ppm(40.0), 4)
    0.4746
    """
    from qsmflow.qsm.oef import delta_chi_from_saturation

    return float(white_matter_chi_ppm(age_years)
                 + delta_chi_from_saturation(saturation, hematocrit=hematocrit))


def make_clinical_head(voxel_size_mm=None, shape=None, age_years: float = 40.0, *,
                       size: str = 'full', saturation: float = DEFAULT_SATURATION,
                       hematocrit: float = DEFAULT_HEMATOCRIT, oversample: int | None = None):
    """Head phantom with :func:`clinical_anatomy` and veins of saturation ``saturation``.

    Parameters are those of :func:`qsmflow.phantom.head.make_head`, plus the venous
    ``saturation`` Y and ``hematocrit`` (fractions) that set the veins' χ.

    Examples
    --------
    >>> head = make_clinical_head(size='small')
    >>> bool(head.roi('haemorrhage').sum() > make_head(size='small').roi('haemorrhage').sum())
    True
    """
    return make_head(voxel_size_mm, shape, age_years, size=size, oversample=oversample,
                     items=clinical_anatomy,
                     chi_overrides_ppm={'vein': vein_chi_ppm(age_years, saturation=saturation,
                                                             hematocrit=hematocrit)})
