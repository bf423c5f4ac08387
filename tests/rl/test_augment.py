"""Random-shift augmentation: the clamped-index version equals pad-then-crop, sample by sample."""

import torch
import torch.nn.functional as F

from difftop.rl.augment import RandomShift


def _reference(x, pad, generator):
    """TD-MPC's definition: replicate-pad by ``pad`` and crop each image at its own offset."""
    n, _, h, w = x.shape
    sx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    sy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    padded = F.pad(x.float(), (pad, pad, pad, pad), mode="replicate")
    return torch.stack([padded[i, :, sy[i]:sy[i] + h, sx[i]:sx[i] + w] for i in range(n)])


def test_shift_equals_replicate_pad_and_crop():
    x = torch.randint(0, 256, (64, 6, 12, 10), dtype=torch.uint8)
    for pad in (1, 4):
        out = RandomShift(pad)(x, torch.Generator().manual_seed(pad))
        ref = _reference(x, pad, torch.Generator().manual_seed(pad))
        assert out.dtype == torch.float32 and out.shape == x.shape
        assert torch.equal(out, ref)
        assert out.is_contiguous(memory_format=torch.channels_last)  # the conv encoder's CPU layout
    xf = x.float()  # float frames give the same result as the replay buffer's uint8 ones
    assert torch.equal(RandomShift(3)(xf, torch.Generator().manual_seed(0)),
                       RandomShift(3)(x, torch.Generator().manual_seed(0)))


def test_shift_moves_images_and_pad_zero_is_identity():
    x = torch.arange(2 * 3 * 9 * 9, dtype=torch.float32).view(2, 3, 9, 9)
    assert RandomShift(0)(x) is x
    assert torch.equal(RandomShift(0)(x.to(torch.uint8)), x.to(torch.uint8).float())  # always float out
    states = torch.randn(5, 7)
    assert RandomShift(4)(states) is states  # non-image observations pass through
    outs = torch.stack([RandomShift(2)(x) for _ in range(20)])
    assert (outs != x).any()  # some draw shifted
    # a shift never invents values: every output pixel is one of its image's pixels
    for o in outs:
        for i in range(2):
            assert torch.isin(o[i], x[i]).all()
