import numpy as np
import pytest
from conftest import make_affine, phantom_array

from medsr.config import DataConfig
from medsr.data import build_sampler, integer_scale, stacks_from_volume, stacks_self_supervised
from medsr.errors import MedsrError
from medsr.io import Volume


def test_source1_pairs_come_from_true_high_resolution(hr_volume):
    config = DataConfig(factors=(2, 3), patch_width=10, patch_slices=4, batch_size=5)
    sampler = build_sampler([(hr_volume, "hr")], config, neighbours=3)
    assert len(sampler.stacks) == 6 * 2  # 3 thick axes x 2 neighbour axes x 2 factors
    stack = sampler.stacks[0]
    thick, target = stack.pairs(config)
    # boxcar factor 2: a thick slice is the mean of two true slices, the target is the truth
    np.testing.assert_allclose(thick[..., 0], stack.array[..., :2].mean(-1), atol=1e-5)
    np.testing.assert_array_equal(target, stack.array[:, :, : thick.shape[2] * 2])
    lr, hr, scale = sampler.sample(np.random.default_rng(0))
    assert lr.shape == (5, 3, 10, 4) and hr.shape == (5, 1, 10, 4 * scale)


def test_neighbours_are_one_thick_spacing_apart(hr_volume):
    stacks = stacks_from_volume(hr_volume, (4,), "hr")
    assert {s.neighbour_offset for s in stacks} == {4}
    scan = Volume(array=phantom_array((20, 18, 6)), affine=make_affine("LIA", (0.5, 0.5, 2.2)))
    stacks = stacks_self_supervised(scan, "scan")
    assert len(stacks) == 2 and {s.neighbour_offset for s in stacks} == {1}
    assert [s.factor for s in stacks] == pytest.approx([4.4, 4.4])
    assert {s.scale for s in stacks} == {5}


def test_self_supervised_target_on_the_integer_grid():
    scan = Volume(array=phantom_array((30, 24, 5)), affine=make_affine("RAS", (1, 1, 2.5)))
    config = DataConfig(self_supervised=True, patch_width=8, patch_slices=4, batch_size=2)
    sampler = build_sampler([(scan, "scan")], config, neighbours=1)
    thick, target = sampler.stacks[0].pairs(config)
    assert target.shape[2] == thick.shape[2] * 3  # factor 2.5 -> network factor 3
    lr, hr, scale = sampler.sample(np.random.default_rng(1))
    assert scale == 3 and hr.shape[-1] == lr.shape[-1] * 3


def test_validation_planes_are_never_training_centres(hr_volume):
    config = DataConfig(
        factors=(2,), patch_width=8, patch_slices=4, batch_size=64, validation_fraction=0.25
    )
    sampler = build_sampler([(hr_volume, "hr")], config, neighbours=1)
    stack = sampler.stacks[0]
    split = sampler._split(stack)
    assert split == stack.array.shape[0] - round(stack.array.shape[0] * 0.25)
    planes = sampler.validation_planes(max_stacks=1, per_stack=100)
    assert len(planes) == stack.array.shape[0] - split
    assert integer_scale(2.0) == 2 and integer_scale(2.01) == 3 and integer_scale(1.2) == 2


def test_wrong_source_is_refused():
    thick = Volume(array=phantom_array((8, 8, 8)), affine=np.diag([1, 1, 3, 1.0]))
    with pytest.raises(MedsrError, match="--self-supervised"):
        stacks_from_volume(thick, (2,), "thick")
    iso = Volume(array=phantom_array((8, 8, 8)), affine=np.eye(4))
    with pytest.raises(MedsrError, match="nearly isotropic"):
        stacks_self_supervised(iso, "iso")
