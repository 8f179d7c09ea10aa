# SPDX-License-Identifier: Apache-2.0
"""``--fast-registration``: from the command line to the registration nodes' thread count
and the sidecars; without it, one thread (bitwise reproducible) whatever is allowed."""
from __future__ import annotations

import pytest


def test_thread_count_of_a_registration():
    from qsmflow.interfaces.registration import REGISTRATION_THREADS, registration_threads

    assert registration_threads(8) == min(8, REGISTRATION_THREADS) == 1
    assert registration_threads(8, fast=True) == 8
    assert registration_threads(0, fast=True) == 1


@pytest.mark.parametrize('fast', [False, True])
def test_flag_reaches_the_nodes_and_the_sidecars(tmp_path, fast):
    from qsmflow.atlases.options import regions_options
    from qsmflow.cli.config import config_from_args
    from qsmflow.cli.parser import build_parser
    from qsmflow.workflows.registration import init_atlas_labels_wf, init_registration_wf

    bids = tmp_path / 'bids'
    bids.mkdir()
    (bids / 'dataset_description.json').write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    argv = [str(bids), str(tmp_path / 'out'), 'participant', '--skip-registration']
    config = config_from_args(build_parser().parse_args(
        argv + (['--fast-registration'] if fast else [])))
    assert config.regions.fast_registration is fast
    assert regions_options(config.regions)['fast'] is fast

    image = tmp_path / 'tpl.nii.gz'
    image.write_bytes(b'')
    reg = init_registration_wf(template='T', template_image=str(image), template_mask=None,
                               output_dir=str(tmp_path), entities={'subject': '01'},
                               omp_nthreads=4, fast=fast)
    assert reg.get_node('register').inputs.fast is fast
    meta = reg.get_node('chi_std').inputs.meta
    assert meta.get('RegistrationThreads') == (4 if fast else None)
    atlas = {'name': 'Phantom', 'image': str(image), 'lut': str(image), 'source': None}
    labels = init_atlas_labels_wf(atlas=atlas, omp_nthreads=4, refine=True, fast=fast)
    assert labels.get_node('refine_nuclei').inputs.fast is fast
    assert (labels.get_node('to_native').inputs.meta.get('RegistrationBitwiseReproducible')
            is (False if fast else None))


@pytest.mark.parametrize('pyramid', ['default', 'quick'])
def test_pyramid_reaches_the_nodes_and_the_sidecars(tmp_path, pyramid):
    """``--registration-pyramid``: config, workflow options, every registration node (the
    template's and a custom atlas's own) and, when not the default, the sidecars."""
    from qsmflow.atlases.options import regions_options
    from qsmflow.cli.config import config_from_args
    from qsmflow.cli.parser import build_parser
    from qsmflow.interfaces.registration import PYRAMIDS
    from qsmflow.workflows.registration import init_atlas_labels_wf, init_registration_wf

    bids = tmp_path / 'bids'
    bids.mkdir()
    (bids / 'dataset_description.json').write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    parser = build_parser()
    choices = next(a.choices for a in parser._actions
                   if '--registration-pyramid' in a.option_strings)
    argv = [str(bids), str(tmp_path / 'out'), 'participant', '--skip-registration',
            '--registration-pyramid', pyramid]
    config = config_from_args(parser.parse_args(argv))
    assert list(choices) == list(PYRAMIDS)
    assert config.regions.registration_pyramid == pyramid
    assert regions_options(config.regions)['pyramid'] == pyramid

    image = tmp_path / 'tpl.nii.gz'
    image.write_bytes(b'')
    reg = init_registration_wf(template='T', template_image=str(image), template_mask=None,
                               output_dir=str(tmp_path), entities={'subject': '01'},
                               pyramid=pyramid)
    assert reg.get_node('register').inputs.pyramid == pyramid
    record = reg.get_node('chi_std').inputs.meta.get('RegistrationPyramid')
    assert record == (None if pyramid == 'default' else pyramid)
    atlas = {'name': 'Own', 'image': str(image), 'lut': str(image), 'source': None,
             'template_image': str(image)}
    labels = init_atlas_labels_wf(atlas=atlas, pyramid=pyramid)
    assert labels.get_node('register_own').inputs.pyramid == pyramid
    assert labels.get_node('to_native').inputs.meta.get('RegistrationPyramid') == record
