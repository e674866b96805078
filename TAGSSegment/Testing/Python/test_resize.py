"""NumPy resizing against torch.nn.functional.interpolate, whose sampling rules it copies (the default model's
inputs and outputs go through it)."""

import numpy as np
import pytest

from tagseg.resize import resize_area, resize_bilinear

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.mark.parametrize(
    "shape,size",
    [
        ((512, 512), (256, 256)),
        ((240, 240), (256, 256)),
        ((320, 320), (256, 256)),
        ((256, 256), (512, 512)),
        ((256, 256), (240, 240)),
        ((37, 53), (256, 256)),
        ((256, 256), (333, 333)),
        ((300, 200), (256, 256)),
    ],
)
def test_matches_torch(shape, size):
    rng = np.random.default_rng(0)
    image = rng.standard_normal((3, *shape)).astype(np.float32) * 100
    reference = F.interpolate(torch.from_numpy(image)[None], size=size, mode="bilinear", align_corners=False)[0]
    assert np.abs(resize_bilinear(image, size) - reference.numpy()).max() <= 1e-5 * np.abs(image).max()
    if shape[0] >= size[0] and shape[1] >= size[1]:
        reference = F.interpolate(torch.from_numpy(image)[None], size=size, mode="area")[0]
        assert np.abs(resize_area(image, size) - reference.numpy()).max() <= 1e-5 * np.abs(image).max()


def test_constant_and_shape():
    image = np.full((5, 7), 3.5, np.float32)
    for resize in (resize_bilinear, resize_area):
        out = resize(image, (3, 4))
        assert out.shape == (3, 4) and out.dtype == np.float32 and np.allclose(out, 3.5)
