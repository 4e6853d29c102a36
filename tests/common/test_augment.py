"""Per-sample image augmentation and the copies of augmentation multiplicity."""

import pytest
import torch

from fedvault.common.augment import Augmentation, augment_batch, repeat_targets
from fedvault.common.errors import ConfigError


def _images(n=4, size=8):
    torch.manual_seed(0)
    return torch.rand(n, 1, size, size)


def test_switched_off_it_copies_the_images_example_major():
    images = _images(3)
    out = augment_batch(images, Augmentation(copies=2))
    assert torch.equal(out, images[[0, 0, 1, 1, 2, 2]])
    assert repeat_targets(torch.tensor([7, 8, 9]), 2).tolist() == [7, 7, 8, 8, 9, 9]


def test_a_flip_mirrors_some_copies_and_leaves_the_others():
    images = _images(2)
    out = augment_batch(images, Augmentation(flip=True, copies=50))
    source = images.repeat_interleave(50, dim=0)
    same = (out - source).abs().flatten(1).amax(1) < 1e-5
    mirrored = (out - source.flip(-1)).abs().flatten(1).amax(1) < 1e-5
    assert bool((same | mirrored).all())
    assert 10 < int(mirrored.sum()) < 90


def test_a_shift_moves_by_whole_pixels_within_the_padding():
    image = torch.zeros(1, 1, 9, 9)
    image[0, 0, 4, 4] = 1.0
    out = augment_batch(image, Augmentation(crop_padding=2, copies=200))
    peaks = [divmod(int(copy.argmax()), 9) for copy in out]
    assert torch.allclose(out.amax(dim=(1, 2, 3)), torch.ones(200))
    assert {abs(r - 4) for r, _ in peaks} | {abs(c - 4) for _, c in peaks} == {0, 1, 2}


def test_every_copy_draws_its_own_rotation_and_zoom():
    images = _images(1, size=16)
    aug = Augmentation(rotation=30, scale=(0.8, 1.2), copies=6)
    out = augment_batch(images, aug)
    assert out.shape == (6, 1, 16, 16)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    distinct = {tuple(copy.flatten().round(decimals=4).tolist()) for copy in out}
    assert len(distinct) == 6
    assert augment_batch(images[:0], aug).shape == (0, 1, 16, 16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rotation": 200}, "rotation"),
        ({"scale": (1.2, 0.8)}, "scale"),
        ({"crop_padding": -1}, "crop-padding"),
        ({"copies": 0}, "copies"),
    ],
)
def test_settings_out_of_range_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Augmentation(**kwargs)
