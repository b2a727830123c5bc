"""Batch augmentation for descriptor training (on the training device, after the DataLoader).

* Independent photometric jitter of A and B (gain, colour balance, gamma, noise): descriptors
  must not depend on exposure or white balance, which differ between a reference shot and a
  live frame.
* Consistent horizontal flip of A and B (the match field is flipped with them).
* DON's background randomisation (Florence et al. 2018, Sec. V-C): with some probability the
  background of A and of B is replaced by unrelated random texture, so the net cannot rely on
  the background to describe the object. Background matches are dropped for those pairs.
"""
from typing import Dict

import torch
import torch.nn.functional as F


def _random_texture(batch: int, height: int, width: int, device, generator=None) -> torch.Tensor:
    """(B,3,H,W) smooth random colour texture in [0,1]: noise at a random coarse scale."""
    out = torch.empty(batch, 3, height, width, device=device)
    for i in range(batch):
        cells = int(torch.randint(2, 24, (1,), generator=generator))
        coarse = torch.rand(1, 3, cells, max(2, cells * width // max(height, 1)), device=device,
                            generator=generator)
        out[i] = F.interpolate(coarse, size=(height, width), mode='bicubic',
                               align_corners=False)[0].clamp(0, 1)
    return out


def _photometric(images: torch.Tensor, generator=None) -> torch.Tensor:
    batch = images.shape[0]
    device = images.device

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, device=device, generator=generator)

    gain = uniform(0.7, 1.3, batch, 1, 1, 1) * uniform(0.9, 1.1, batch, 3, 1, 1)
    gamma = uniform(0.75, 1.33, batch, 1, 1, 1)
    noise = uniform(0.0, 0.02, batch, 1, 1, 1) * torch.randn(images.shape, device=device,
                                                             generator=generator)
    return ((images.clamp(0, 1) ** gamma) * gain + noise).clamp(0, 1)


def augment_pairs(batch: Dict[str, torch.Tensor], flip_prob: float = 0.5,
                  background_prob: float = 0.2, generator=None) -> Dict[str, torch.Tensor]:
    """Augmented copy of a batch of pairs (keys as :mod:`.data` produces, leading dim B)."""
    out = dict(batch)
    image_a, image_b = batch['image_a'], batch['image_b']
    batch_size, _, height, width = image_a.shape
    device = image_a.device
    match = batch['match_b_px'].clone()
    valid = batch['match_valid'].clone()
    mask_a, mask_b = batch['object_mask_a'], batch['object_mask_b']

    # 1. consistent horizontal flip
    flip = torch.rand(batch_size, device=device, generator=generator) < flip_prob
    if bool(flip.any()):
        def flip_w(t):
            return torch.where(flip.view(-1, *[1] * (t.dim() - 1)), t.flip(-1), t)
        image_a, image_b = flip_w(image_a), flip_w(image_b)
        mask_a, mask_b, valid = flip_w(mask_a), flip_w(mask_b), flip_w(valid)
        match = flip_w(match)
        match[:, 0] = torch.where(flip.view(-1, 1, 1), (width - 1) - match[:, 0], match[:, 0])

    # 2. background randomisation
    randomise = torch.rand(batch_size, device=device, generator=generator) < background_prob
    if bool(randomise.any()):
        sel = randomise.view(-1, 1, 1, 1)
        texture_a = _random_texture(batch_size, height, width, device, generator)
        texture_b = _random_texture(batch_size, height, width, device, generator)
        image_a = torch.where(sel & ~mask_a, texture_a, image_a)
        image_b = torch.where(sel & ~mask_b, texture_b, image_b)
        valid = valid & (~sel | mask_a)
        # Only A pixels that land on an object of B can still match (background of B changed).
        lands_on_object = _lookup_mask(mask_b, match)
        valid = valid & (~sel | lands_on_object)

    # 3. photometric jitter, independently for A and B
    out.update(image_a=_photometric(image_a, generator), image_b=_photometric(image_b, generator),
               match_b_px=match, match_valid=valid, object_mask_a=mask_a, object_mask_b=mask_b)
    return out


def _lookup_mask(mask_b: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) bool mask of B read at the (rounded) match of each A pixel -> (B,1,H,W)."""
    batch, _, height, width = mask_b.shape
    col = match[:, 0].round().long().clamp(0, width - 1)
    row = match[:, 1].round().long().clamp(0, height - 1)
    flat = mask_b.view(batch, -1)
    return torch.gather(flat, 1, (row * width + col).view(batch, -1)).view(batch, 1, height, width)
