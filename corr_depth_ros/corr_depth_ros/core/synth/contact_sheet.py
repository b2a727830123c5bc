"""Contact sheets: one image that lets a person check a synthetic dataset at a glance.

Stereo rows: left | right | disparity (TURBO, near = red) | left with occluded pixels in red.
Multiview rows: A | B with correspondences drawn as dots joined by lines | A with the pixels
visible in B tinted green and object pixels outlined.
"""
from typing import Optional, Sequence

import numpy as np
import torch

from ..shapes import check_shape


def to_uint8_rgb(image) -> np.ndarray:
    """(3,H,W) float tensor/array in [0,1] -> (H,W,3) uint8 RGB."""
    array = image.detach().cpu().numpy() if torch.is_tensor(image) else np.asarray(image)
    check_shape('image', array, (3, None, None))
    return (np.clip(array, 0.0, 1.0).transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)


def colourise_disparity(disparity_px, max_disparity_px: Optional[float] = None) -> np.ndarray:
    """(H,W) disparity, pixels -> (H,W,3) uint8 RGB with the TURBO colour map.

    Scaled to ``max_disparity_px`` (default: the image's 99th percentile) so near is red and
    far is blue; invalid (NaN or <= 0) pixels are black.
    """
    import cv2

    array = disparity_px.detach().cpu().numpy() if torch.is_tensor(disparity_px) \
        else np.asarray(disparity_px)
    array = np.squeeze(array).astype(np.float32)
    check_shape('disparity_px', array, (None, None))
    valid = np.isfinite(array) & (array > 0)
    if max_disparity_px is None:
        max_disparity_px = float(np.percentile(array[valid], 99)) if valid.any() else 1.0
    scaled = np.clip(np.where(valid, array, 0.0) / max(max_disparity_px, 1e-6), 0.0, 1.0)
    bgr = cv2.applyColorMap((scaled * 255.0).astype(np.uint8), cv2.COLORMAP_TURBO)
    bgr[~valid] = 0
    return bgr[..., ::-1].copy()


def _label(panel: np.ndarray, text: str) -> np.ndarray:
    import cv2

    panel = np.ascontiguousarray(panel)
    scale = max(0.3, panel.shape[0] / 600.0)
    cv2.putText(panel, text, (4, int(14 * scale / 0.4)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(panel, text, (4, int(14 * scale / 0.4)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), 1, cv2.LINE_AA)
    return panel


def _squeeze(mask) -> np.ndarray:
    array = mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
    return np.squeeze(array)


def stereo_contact_sheet(samples: Sequence[dict]) -> np.ndarray:
    """(rows*H, 4*W, 3) uint8 RGB sheet of stereo samples (dicts as render_stereo_pair)."""
    if not samples:
        raise ValueError('stereo_contact_sheet needs at least one sample')
    rows = []
    for sample in samples:
        left, right = to_uint8_rgb(sample['left']), to_uint8_rgb(sample['right'])
        occluded = _squeeze(sample['occlusion_left']).astype(bool)
        overlay = left.copy()
        overlay[occluded] = (0.4 * overlay[occluded] + 0.6 * np.array([255, 0, 0])).astype(np.uint8)
        baseline = float(sample['baseline_m'])
        max_disparity = float(np.nanmax(_squeeze(sample['disparity_left_px'])))
        rows.append(np.concatenate([
            _label(left, f"seed {int(sample['seed'])}  B={baseline:.3f} m"),
            _label(right, 'right'),
            _label(colourise_disparity(sample['disparity_left_px']),
                   f'disparity max {max_disparity:.1f} px'),
            _label(overlay, 'occluded in right')], axis=1))
    return np.concatenate(rows, axis=0)


def multiview_contact_sheet(samples: Sequence[dict], num_matches: int = 12,
                            seed: int = 0) -> np.ndarray:
    """(rows*H, 3*W, 3) uint8 RGB sheet of multiview samples with drawn correspondences.

    Matches are drawn from pixels of A visible in B (objects first, then background), chosen
    with a fixed seed so that the sheet is reproducible.
    """
    import cv2

    if not samples:
        raise ValueError('multiview_contact_sheet needs at least one sample')
    generator = np.random.default_rng(seed)
    rows = []
    for sample in samples:
        image_a, image_b = to_uint8_rgb(sample['image_a']), to_uint8_rgb(sample['image_b'])
        height, width = image_a.shape[:2]
        visible = _squeeze(sample['visible_in_b']).astype(bool)
        objects = _squeeze(sample['object_mask_a']).astype(bool)
        match = sample['match_b_px']
        match = match.detach().cpu().numpy() if torch.is_tensor(match) else np.asarray(match)
        pool = np.flatnonzero(visible & objects)
        if pool.size < num_matches:
            pool = np.flatnonzero(visible)
        chosen = generator.choice(pool, size=min(num_matches, pool.size), replace=False) \
            if pool.size else np.zeros(0, dtype=np.int64)
        pair = np.ascontiguousarray(np.concatenate([image_a, image_b], axis=1))
        for k, flat in enumerate(chosen):
            ya, xa = divmod(int(flat), width)
            xb, yb = match[0].reshape(-1)[flat], match[1].reshape(-1)[flat]
            colour = tuple(int(c) for c in cv2.applyColorMap(
                np.uint8([[int(255 * k / max(1, len(chosen) - 1))]]), cv2.COLORMAP_HSV)[0, 0])
            a_point = (xa, ya)
            b_point = (int(round(xb)) + width, int(round(yb)))
            cv2.line(pair, a_point, b_point, colour, 1, cv2.LINE_AA)
            cv2.circle(pair, a_point, 3, colour, -1, cv2.LINE_AA)
            cv2.circle(pair, b_point, 3, colour, -1, cv2.LINE_AA)
        tinted = image_a.copy()
        tinted[visible] = (0.5 * tinted[visible] + 0.5 * np.array([0, 255, 0])).astype(np.uint8)
        edges = cv2.Canny(objects.astype(np.uint8) * 255, 50, 150) > 0
        tinted[edges] = (255, 255, 0)
        rows.append(np.concatenate([
            _label(pair[:, :width], f"seed {int(sample['seed'])}  A"),
            _label(pair[:, width:], 'B'),
            _label(tinted, 'visible in B (green), objects (yellow)')], axis=1))
    return np.concatenate(rows, axis=0)
