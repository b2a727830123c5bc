"""Pixelwise contrastive loss of Dense Object Nets (Florence, Manuelli, Tedrake, CoRL 2018).

For descriptor images ``f_a = f(I_a)``, ``f_b = f(I_b)`` and ``D = ||f_a(u_a) - f_b(u_b)||_2``:

    L_matches     = 1/N_matches * sum over matches (u_a, u_b) of D^2
    L_non-matches = 1/N_hard    * sum over non-matches of max(0, M - D)^2

where ``N_hard`` counts the non-matches whose hinge is non-zero ("hard negatives"). DON's
scaling by N_hard instead of by all non-matches (Sec. V of the paper, "scaling by hard
negatives") keeps the gradient of the few still-confusable pairs from being diluted by the many
that are already far apart. The hinge is squared as in the paper's equation and the authors'
pytorch-dense-correspondence code.

Matches come from the renderer's ground truth: A pixel ``u_a`` matches ``match_b_px[:, u_a]`` in
B where ``visible_in_b``. Non-matches are drawn separately on objects and on the background of
B ("masked sampling"), each term scaled by its own N_hard, so that the many easy background pairs
do not drown the object pairs. We add a third set of non-matches a few pixels from the true
match (``near``): our evaluation asks for 3-pixel accuracy, and uniform sampling almost never
asks the net to tell a pixel from its neighbours.

Optionally (``global_non_matches`` > 0) a fourth set is *mined* rather than sampled: for some of
the matches, the K pixels of all of B whose descriptors lie closest to the A descriptor (outside
``min_non_match_px`` of the true match). The service and the evaluation take the arg-min over
the whole image, so one confusable pixel anywhere is a wrong answer; a handful of uniform
non-matches per match rarely contains it. This is the hardest-negative mining of metric
learning (e.g. Hermans et al. 2017, "In Defense of the Triplet Loss"; DON's own code mines
within its sampled non-matches only). The search runs without gradients; only the K chosen
pairs enter the loss, with the same hinge and the same scaling by hard negatives.

Optionally (``edge_match_weight`` != 1) matches near an edge of the correspondence field are
drawn that much more often (:func:`match_edge_band`).
"""
import math
from dataclasses import asdict, dataclass
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from ..shapes import check_shape
from ..training import field_steps


@dataclass(frozen=True)
class ContrastiveConfig:
    margin: float = 1.0                   # M, in descriptor-space L2 units
    num_matches: int = 2048               # match pixels sampled per image pair
    object_match_weight: float = 2.0      # sampling weight of object pixels vs background (1)
    object_non_matches: int = 4           # non-matches on B's objects, per match
    background_non_matches: int = 4       # non-matches on B's background, per match
    near_non_matches: int = 2             # non-matches near the true match, per match
    near_radius_px: Tuple[float, float] = (4.0, 16.0)
    min_non_match_px: float = 3.0         # a "non-match" closer than this to the match is ignored
    non_match_weight: float = 1.0
    near_weight: float = 1.0
    global_non_matches: int = 0           # K hardest non-matches mined over all of B, per match
    global_matches: int = 256             # matches (of num_matches) that get the global search
    global_weight: float = 1.0
    edge_match_weight: float = 1.0        # sampling weight of matches near a correspondence edge
    edge_jump_px: float = 3.0             # neighbours whose displacements into B differ this much
    edge_radius_px: int = 3               # matches within this many pixels of one are weighted

    def to_dict(self) -> dict:
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
        if self.edge_match_weight == 1.0:
            # Off: left out, so that the runs and weights files from before the option read
            # (and resume) as they were.
            for key in ('edge_match_weight', 'edge_jump_px', 'edge_radius_px'):
                del out[key]
        return out


def contrastive_terms(match_a: torch.Tensor, match_b: torch.Tensor, non_match_a: torch.Tensor,
                      non_match_b: torch.Tensor, margin: float,
                      non_match_valid: torch.Tensor = None
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two DON terms from descriptors already looked up at the sampled pixels.

    Args:
        match_a, match_b: (N,D) descriptors of matching pixels in A and B.
        non_match_a, non_match_b: (M,D) descriptors of non-matching pairs.
        margin: M (> 0), descriptor-space L2 units.
        non_match_valid: optional (M,) bool; False pairs are left out of both sums.
    Returns:
        (match_loss, non_match_loss, num_hard): scalar tensors; ``non_match_loss`` is the sum of
        squared hinges divided by ``num_hard`` (the count of non-zero hinges), and 0 when none.
        ``match_loss`` is 0 when N = 0.
    """
    sizes = check_shape('match_a', match_a, ('N', 'D'))
    check_shape('match_b', match_b, ('N', 'D'), sizes)
    check_shape('non_match_a', non_match_a, ('M', 'D'), sizes)
    check_shape('non_match_b', non_match_b, ('M', 'D'), sizes)
    if margin <= 0:
        raise ValueError(f'margin must be > 0, got {margin}')
    if match_a.shape[0] > 0:
        match_loss = (match_a - match_b).pow(2).sum(dim=1).mean()
    else:
        match_loss = match_a.sum() * 0.0
    distance = (non_match_a - non_match_b).pow(2).sum(dim=1).clamp_min(1e-12).sqrt()
    hinge = (margin - distance).clamp_min(0.0)
    if non_match_valid is not None:
        check_shape('non_match_valid', non_match_valid, (sizes['M'],))
        hinge = hinge * non_match_valid.to(hinge.dtype)
    num_hard = (hinge > 0).sum()
    # Dividing by max(1, N_hard): with no hard negative the term is exactly 0 (and so is its
    # gradient), which is what "all non-matches are already beyond the margin" should mean.
    non_match_loss = hinge.pow(2).sum() / num_hard.clamp_min(1).to(hinge.dtype)
    return match_loss, non_match_loss, num_hard


def sample_descriptors(descriptors: torch.Tensor, pixels_xy: torch.Tensor) -> torch.Tensor:
    """Bilinear look-up of descriptors at sub-pixel locations.

    Args:
        descriptors: (D,H,W). pixels_xy: (N,2) float (x = column, y = row), pixel-centre origin.
    Returns:
        (N,D); locations outside the image read the nearest border descriptor.
    """
    sizes = check_shape('descriptors', descriptors, ('D', 'H', 'W'))
    check_shape('pixels_xy', pixels_xy, (None, 2))
    height, width = sizes['H'], sizes['W']
    # align_corners=True maps -1/+1 to the centres of the border pixels, i.e. pixel index space.
    # The grid stays float32 even when the descriptors are half or bfloat16 (mixed-precision
    # training): bfloat16 would move a ground-truth location at x = 200.3 to 200.2 (up to 0.5 px
    # at 256 px, 1.25 px at 640), so the look-up runs in float32.
    grid = torch.empty_like(pixels_xy, dtype=torch.float32)
    grid[:, 0] = pixels_xy[:, 0] * (2.0 / max(width - 1, 1)) - 1.0
    grid[:, 1] = pixels_xy[:, 1] * (2.0 / max(height - 1, 1)) - 1.0
    out = F.grid_sample(descriptors[None].float(), grid[None, None], mode='bilinear',
                        padding_mode='border', align_corners=True)
    return out[0, :, 0].t().to(descriptors.dtype)


def _sample_pixels(weights: torch.Tensor, count: int, generator=None) -> torch.Tensor:
    """``count`` flat indices drawn with replacement from (H*W,) non-negative weights."""
    return torch.multinomial(weights, count, replacement=True, generator=generator)


def _flat_to_xy(index: torch.Tensor, width: int) -> torch.Tensor:
    return torch.stack([index % width, torch.div(index, width, rounding_mode='floor')], dim=1).float()


def pair_loss(desc_a: torch.Tensor, desc_b: torch.Tensor, match_b_px: torch.Tensor,
              match_valid: torch.Tensor, object_mask_a: torch.Tensor, object_mask_b: torch.Tensor,
              cfg: ContrastiveConfig, generator=None) -> Tuple[torch.Tensor, Dict[str, float]]:
    """DON loss of one image pair, with masked sampling of matches and non-matches.

    Args:
        desc_a, desc_b: (D,H,W) descriptor images of A and B.
        match_b_px: (2,H,W) float location (x, y) in B of each A pixel, pixels.
        match_valid: (H,W) bool, A pixels whose match is visible in B (and inside it).
        object_mask_a, object_mask_b: (H,W) bool, object (True) vs background pixels.
    Returns:
        (loss, logs) with loss a scalar tensor; logs hold floats for log.jsonl.
    """
    sizes = check_shape('desc_a', desc_a, ('D', 'H', 'W'))
    check_shape('desc_b', desc_b, ('D', 'H', 'W'), sizes)
    check_shape('match_b_px', match_b_px, (2, 'H', 'W'), sizes)
    for name, mask in (('match_valid', match_valid), ('object_mask_a', object_mask_a),
                       ('object_mask_b', object_mask_b)):
        check_shape(name, mask, ('H', 'W'), sizes)
    height, width = sizes['H'], sizes['W']
    device = desc_a.device
    zero = desc_a.sum() * 0.0
    if not bool(match_valid.any()):
        return zero, {'matches': 0.0}

    # 1. matches: A pixels with a visible match, objects weighted up, and optionally those near
    #    a correspondence edge (see match_edge_band)
    weights_a = match_valid.float() * (1.0 + (cfg.object_match_weight - 1.0) * object_mask_a.float())
    if cfg.edge_match_weight != 1.0:
        weights_a = weights_a * (1.0 + (cfg.edge_match_weight - 1.0) * match_edge_band(
            match_b_px, match_valid, cfg.edge_jump_px, cfg.edge_radius_px).float())
    index_a = _sample_pixels(weights_a.flatten(), cfg.num_matches, generator)
    pix_a = _flat_to_xy(index_a, width)
    pix_b = match_b_px.flatten(1)[:, index_a].t().float()
    feat_a = desc_a.flatten(1)[:, index_a].t()            # integer pixels: no interpolation
    feat_b = sample_descriptors(desc_b, pix_b)

    logs = {}
    total = zero
    # 2. non-matches, one set per kind: B pixels drawn from objects / background / near the match
    kinds = []
    obj_b = object_mask_b.flatten().float()
    for kind, per_match, pool in (('object', cfg.object_non_matches, obj_b),
                                  ('background', cfg.background_non_matches, 1.0 - obj_b)):
        if per_match > 0 and float(pool.sum()) > 0:
            idx = _sample_pixels(pool, cfg.num_matches * per_match, generator)
            kinds.append((kind, per_match, _flat_to_xy(idx, width), cfg.non_match_weight,
                          cfg.num_matches))
    if cfg.near_non_matches > 0:
        count = cfg.num_matches * cfg.near_non_matches
        lo, hi = cfg.near_radius_px
        radius = lo + (hi - lo) * torch.rand(count, device=device, generator=generator)
        angle = 2.0 * torch.pi * torch.rand(count, device=device, generator=generator)
        centre = pix_b.repeat(cfg.near_non_matches, 1)
        near = centre + torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
        near[:, 0] = near[:, 0].clamp(0, width - 1)
        near[:, 1] = near[:, 1].clamp(0, height - 1)
        kinds.append(('near', cfg.near_non_matches, near, cfg.near_weight, cfg.num_matches))
    if cfg.global_non_matches > 0:
        count = min(cfg.global_matches, cfg.num_matches)
        mined = mine_hardest_non_matches(feat_a[:count].detach(), desc_b.detach(), pix_b[:count],
                                         cfg.global_non_matches, cfg.min_non_match_px)
        # Laid out like the other kinds: K blocks of ``count`` pixels, block k = k-th hardest.
        kinds.append(('global', cfg.global_non_matches, mined.transpose(0, 1).reshape(-1, 2),
                      cfg.global_weight, count))

    match_loss, _, _ = contrastive_terms(feat_a, feat_b, feat_a[:0], feat_b[:0], cfg.margin)
    total = total + match_loss
    logs['match_loss'] = float(match_loss.detach())
    logs['match_distance'] = float((feat_a - feat_b).detach().norm(dim=1).mean())
    for kind, per_match, pix_non_b, weight, used in kinds:
        true_b = pix_b[:used].repeat(per_match, 1)
        # A pixel within min_non_match_px of the true match is not a non-match at all.
        far_enough = (pix_non_b - true_b).norm(dim=1) >= cfg.min_non_match_px
        _, non_match_loss, num_hard = contrastive_terms(
            feat_a[:0], feat_b[:0], feat_a[:used].repeat(per_match, 1),
            sample_descriptors(desc_b, pix_non_b), cfg.margin, far_enough)
        total = total + weight * non_match_loss
        logs[f'{kind}_loss'] = float(non_match_loss.detach())
        logs[f'{kind}_hard_frac'] = float(num_hard) / max(1, int(far_enough.sum()))
    del pix_a
    return total, logs


@torch.no_grad()
def match_edge_band(match_b_px: torch.Tensor, match_valid: torch.Tensor, jump_px: float = 3.0,
                    radius_px: int = 3) -> torch.Tensor:
    """(2,H,W) match locations in B and (H,W) bool validity -> (H,W) bool: valid A pixels within
    ``radius_px`` of an edge of the correspondence field, i.e. of two neighbours whose
    displacements into B differ by more than ``jump_px`` (a depth edge seen from two viewpoints;
    in a stereo pair, a disparity step over ``jump_px``), or of a valid pixel
    next to one whose match is hidden in B though inside it (an occlusion's border).

    Why: on the real Motorcycle pair the shipped net finds 0.92 of the queries 10 px or more
    from a depth edge to 3 px, 0.75 of those 3-10 px from one and 0.60 of those within 3 px
    (``corr_depth eval corr``, ``by_depth_edge_distance``). Near an edge a descriptor's context
    holds the other surface, which moves differently between the views; drawing more training
    matches there asks the net to rely on its own surface.
    """
    sizes = check_shape('match_b_px', match_b_px, (2, 'H', 'W'))
    check_shape('match_valid', match_valid, ('H', 'W'), sizes)
    height, width = sizes['H'], sizes['W']
    valid = match_valid[None, None]
    # Steps of the displacement (where a pixel lands minus where it is), not of the landing
    # place: neighbours on one smooth surface land ~1 px apart, so a landing-place test would
    # mark a -3 px disparity step but not a +3 px one. For a stereo pair this is |delta d|.
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                            torch.arange(width, dtype=torch.float32), indexing='ij')
    displacement = match_b_px.float() - torch.stack([xs, ys]).to(match_b_px.device)
    steps = field_steps(displacement[None], valid, jump_px)
    # Hidden in B but landing inside it: occluded (invalid matches outside B are a view's edge,
    # not a depth edge; the loaders store unknown locations as (0, 0), which counts as outside).
    x, y = match_b_px[0], match_b_px[1]
    inside = (x > 0) & (x <= width - 1) & (y > 0) & (y <= height - 1)
    marks = (steps | (~match_valid & inside)[None, None]).float()
    band = F.max_pool2d(marks, 2 * radius_px + 1, stride=1, padding=radius_px) > 0
    return band[0, 0] & match_valid


@torch.no_grad()
def mine_hardest_non_matches(reference: torch.Tensor, descriptors: torch.Tensor,
                             true_px: torch.Tensor, count: int,
                             exclusion_px: float) -> torch.Tensor:
    """The ``count`` pixels of a descriptor image closest to each reference descriptor, leaving
    out a disc of ``exclusion_px`` around that reference's true match.

    Args:
        reference: (N,D) descriptors. descriptors: (D,H,W). true_px: (N,2) float (x, y).
        count: K (>= 1, at most H*W minus the excluded disc).
    Returns:
        (N,K,2) float (x, y) integer pixel positions, nearest first.
    """
    from .matching import squared_distances
    sizes = check_shape('reference', reference, ('N', 'D'))
    check_shape('descriptors', descriptors, (sizes['D'], 'H', 'W'))
    check_shape('true_px', true_px, (sizes['N'], 2))
    height, width = descriptors.shape[1:]
    if not 1 <= count < height * width:
        raise ValueError(f'count must be in [1, {height * width - 1}], got {count}')
    dist2 = squared_distances(reference, descriptors).reshape(len(reference), height * width)
    # Exclude the disc: every integer offset within exclusion_px of the true match (N x ~pi r^2
    # writes instead of an (N,H,W) mask). Offsets outside the disc or the image write to the
    # nearest pixel of the match instead, which is excluded anyway.
    reach = int(math.ceil(exclusion_px)) + 1
    steps = torch.arange(-reach, reach + 1, device=dist2.device, dtype=torch.float32)
    dx, dy = torch.meshgrid(steps, steps, indexing='xy')
    centre = torch.stack([true_px[:, 0].round().clamp(0, width - 1),
                          true_px[:, 1].round().clamp(0, height - 1)], dim=1)
    px = centre[:, 0, None] + dx.reshape(1, -1)
    py = centre[:, 1, None] + dy.reshape(1, -1)
    inside = (((px - true_px[:, 0, None]).pow(2) + (py - true_px[:, 1, None]).pow(2))
              < exclusion_px ** 2) & (px >= 0) & (px <= width - 1) & (py >= 0) & (py <= height - 1)
    flat = torch.where(inside, py * width + px, (centre[:, 1] * width + centre[:, 0])[:, None])
    dist2.scatter_(1, flat.long(), float('inf'))
    index = dist2.topk(count, dim=1, largest=False).indices          # (N,K)
    return torch.stack([index % width, torch.div(index, width, rounding_mode='floor')],
                       dim=2).float()
