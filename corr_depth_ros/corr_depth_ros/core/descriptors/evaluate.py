"""Evaluation of dense correspondences: the descriptor net against SIFT and patch NCC.

Every method searches the WHOLE other image for each query pixel (no epipolar shortcut), as the
correspondence service does. Metrics (per query, then aggregated):

* PCK@t: fraction of queries whose match lies within t pixels of the ground truth;
* median pixel error;
* DON's "fraction of false positives" (Florence et al. 2018, Sec. VI; the authors' evaluation
  calls it ``fraction_pixels_closer_than_ground_truth``): the share of candidate pixels of the
  other image that score better than the true match. 0 = the true match is the best candidate.

Ground truth
------------
* Middlebury Motorcycle: left (x, y) -> right (x - d, y) from the left GT disparity (without
  doffs: the images are the rectified pair as published). Only left pixels visible in the right
  image count. With no right-view GT in scikit-image's copy we derive visibility from the left
  GT alone: forward-warp every left pixel to the right image and keep, per right pixel, the
  largest disparity landing there (a z-buffer: larger disparity = nearer). A left pixel whose
  disparity is more than ``occlusion_tol_px`` below that maximum is hidden behind a nearer
  surface in the right view; pixels mapped outside the right image are dropped too.
* Synthetic: held-out multiview pairs (seeds HELD_OUT_SEED + 500000 and up, disjoint from the
  validation pairs used for model selection), ``visible_in_b`` from the renderer.
"""
import os
import time
from typing import Dict, Optional

import numpy as np
import torch

from ..shapes import check_shape
from .matching import (descriptors_at, find_best_matches, pixel_norms2, squared_distances,
                       subpixel_minimum)
from .network import DEFAULT_SCALES, compute_descriptors

THRESHOLDS_PX = (1, 3, 5, 10)
SYNTHETIC_TEST_OFFSET = 500_000
# Queries split by their distance to the nearest depth edge (px): [0, 3), [3, 10), [10, inf).
EDGE_DISTANCE_BINS_PX = (3.0, 10.0)


def visible_in_right(disparity_px: np.ndarray, occlusion_tol_px: float = 1.0) -> np.ndarray:
    """(H,W) left GT disparity (NaN = none) -> (H,W) bool: has GT and is seen by the right camera.

    See the module docstring (forward-warp z-buffer on the left disparity).
    """
    check_shape('disparity_px', disparity_px, (None, None))
    height, width = disparity_px.shape
    has_gt = np.isfinite(disparity_px) & (disparity_px > 0)
    xs = np.arange(width)[None, :].repeat(height, 0)
    target = np.where(has_gt, np.round(xs - np.nan_to_num(disparity_px)), -1).astype(np.int64)
    in_view = has_gt & (target >= 0) & (target <= width - 1)
    zbuffer = np.full((height, width), -np.inf)
    rows = np.nonzero(in_view)[0]
    np.maximum.at(zbuffer, (rows, target[in_view]), disparity_px[in_view])
    nearest = np.full((height, width), np.inf)
    nearest[in_view] = zbuffer[rows, target[in_view]]
    return in_view & (disparity_px >= nearest - occlusion_tol_px)


def sample_queries(valid: np.ndarray, count: int, seed: int = 0, border_px: int = 0) -> np.ndarray:
    """(N,2) float32 (x, y) pixels drawn without replacement from the True pixels of ``valid``."""
    check_shape('valid', valid, (None, None))
    mask = valid.copy()
    if border_px:
        mask[:border_px], mask[-border_px:] = False, False
        mask[:, :border_px], mask[:, -border_px:] = False, False
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        raise ValueError('no valid query pixels')
    pick = np.random.default_rng(seed).choice(len(rows), size=min(count, len(rows)), replace=False)
    return np.stack([cols[pick], rows[pick]], axis=1).astype(np.float32)


def pick_reference_pixels(disparity_px: np.ndarray, image_rgb8: Optional[np.ndarray] = None,
                          count: int = 5) -> list:
    """``count`` well-spread (x, y) pixels where a grasp planner would click (make demo's
    reference): on the nearest surfaces (largest disparity: the objects, not the room behind
    them), at least 6 px from a depth edge (:func:`depth_edge_distance_px`; a descriptor there
    holds the other surface too), on texture, and away from the border (a later frame may no
    longer see it); chosen by farthest-point sampling, deterministic. Each condition is dropped
    in turn if no pixel meets them all. ``disparity_px`` (H,W), NaN / <= 0 where unknown."""
    import cv2
    height, width = disparity_px.shape
    known = np.isfinite(disparity_px) & (disparity_px > 0)
    if not known.any():
        return [((i + 1) * width / (count + 1), height / 2) for i in range(count)]
    near = known & (disparity_px >= np.percentile(disparity_px[known], 85))
    interior = depth_edge_distance_px(disparity_px) >= 6
    textured = np.ones((height, width), bool)
    if image_rgb8 is not None:
        grey = cv2.cvtColor(image_rgb8, cv2.COLOR_RGB2GRAY).astype(np.float32)
        mean = cv2.blur(grey, (9, 9))
        spread = np.sqrt(np.maximum(cv2.blur(grey * grey, (9, 9)) - mean * mean, 0.0))
        textured = spread >= np.percentile(spread, 50)
    margin = np.zeros((height, width), bool)
    margin[height // 10:height - height // 10, width // 10:width - width // 10] = True
    keep = known
    for condition in (margin, near, interior, textured):
        if (keep & condition).any():
            keep = keep & condition
    rows, cols = np.nonzero(keep)
    candidates = np.stack([cols, rows], axis=1).astype(np.float64)
    chosen = [candidates[len(candidates) // 2]]
    distance = np.linalg.norm(candidates - chosen[0], axis=1)
    while len(chosen) < count:
        chosen.append(candidates[int(np.argmax(distance))])
        distance = np.minimum(distance, np.linalg.norm(candidates - chosen[-1], axis=1))
    return [(float(x), float(y)) for x, y in chosen]


def motorcycle_queries(disparity_px: np.ndarray, count: int, seed: int = 0,
                       visible: Optional[np.ndarray] = None):
    """Queries on the left Motorcycle image among pixels the right view sees (``visible``, from
    visible_in_right when not given), and their true right-image positions (x - d, y):
    ((N,2) queries, (N,2) truth), float32 pixels."""
    if visible is None:
        visible = visible_in_right(disparity_px)
    queries = sample_queries(visible, count, seed)
    rows, cols = queries[:, 1].astype(int), queries[:, 0].astype(int)
    truth = np.stack([queries[:, 0] - disparity_px[rows, cols], queries[:, 1]], 1)
    return queries, truth.astype(np.float32)


def depth_edge_distance_px(disparity_px: np.ndarray, step_px: Optional[float] = None) -> np.ndarray:
    """(H,W) GT disparity (NaN / inf / <= 0 = none) -> (H,W) float32 distance in pixels to the
    nearest depth edge: a pair of 4-neighbours with GT whose disparities differ by more than
    ``step_px`` (default training.DEPTH_EDGE_STEP_PX, as eval stereo; training.field_steps).
    Where GT is missing next to a surface, no edge is assumed. Inf everywhere when the image
    has no edge."""
    import cv2

    from ..training import DEPTH_EDGE_STEP_PX, field_steps
    step_px = DEPTH_EDGE_STEP_PX if step_px is None else step_px
    check_shape('disparity_px', disparity_px, (None, None))
    disparity = torch.from_numpy(np.asarray(disparity_px, dtype=np.float32))[None, None]
    known = torch.isfinite(disparity) & (disparity > 0)
    edges = field_steps(disparity, known, step_px)[0, 0].numpy()
    if not edges.any():
        return np.full(edges.shape, np.inf, np.float32)
    return cv2.distanceTransform((~edges).astype(np.uint8), cv2.DIST_L2, 5)


def pck_by_edge_distance(errors_px: np.ndarray, distance_px: np.ndarray,
                         threshold_px: float = 3.0) -> Dict[str, Dict[str, float]]:
    """PCK@threshold of the queries in each EDGE_DISTANCE_BINS_PX bin of their distance to a
    depth edge: {'0-3px': {'pck@3': ..., 'queries': n}, ...}."""
    edges = (0.0,) + EDGE_DISTANCE_BINS_PX + (np.inf,)
    out = {}
    for low, high in zip(edges[:-1], edges[1:]):
        name = f'{low:g}-{high:g}px' if np.isfinite(high) else f'{low:g}px+'
        inside = (distance_px >= low) & ((distance_px < high) | np.isinf(high))
        out[name] = {f'pck@{threshold_px:g}': float(np.mean(errors_px[inside] <= threshold_px))
                     if inside.any() else None, 'queries': int(inside.sum())}
    return out


def summarise(errors_px: np.ndarray, false_positive_fraction: np.ndarray,
              seconds: float) -> Dict[str, float]:
    out = {f'pck@{t}': float(np.mean(errors_px <= t)) for t in THRESHOLDS_PX}
    out['median_error_px'] = float(np.median(errors_px))
    out['mean_fraction_false_positives'] = float(np.mean(false_positive_fraction))
    out['queries'] = int(len(errors_px))
    out['seconds'] = float(seconds)
    return out


# --- methods: each returns (matches (N,2) px, fraction of false positives (N,)) ----------------
@torch.no_grad()
def match_descriptor_net(model, image_a: np.ndarray, image_b: np.ndarray, queries_px: np.ndarray,
                         truth_px: np.ndarray, scales=DEFAULT_SCALES):
    """Descriptor net: whole-image arg-min in B. Images (H,W,3) uint8 RGB; ``scales`` as in
    network.compute_descriptors (what the node uses)."""
    desc_a = compute_descriptors(model, image_a, scales=scales)
    desc_b = compute_descriptors(model, image_b, scales=scales)
    reference = descriptors_at(desc_a, queries_px)
    norms2 = pixel_norms2(desc_b)
    found = find_best_matches(reference, desc_b, norms2=norms2)
    at_truth = descriptors_at(desc_b, np.clip(truth_px, 0, [desc_b.shape[2] - 1, desc_b.shape[1] - 1]))
    truth_d2 = (reference - at_truth).pow(2).sum(1)
    fractions = []
    for start in range(0, len(reference), 64):
        dist2 = squared_distances(reference[start:start + 64], desc_b, norms2).flatten(1)
        fractions.append((dist2 < truth_d2[start:start + 64, None]).float().mean(1))
    return found['match_px'], torch.cat(fractions).cpu().numpy()


def _grey(image: np.ndarray) -> np.ndarray:
    import cv2
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


# Baseline settings, chosen on synthetic *validation* stereo pairs (4 pairs at 640x480, seeds
# HELD_OUT_SEED + i, apart from the test pairs; 1000 queries), by PCK@3, before they were run
# on Motorcycle (stop 18; before, 16 px and 15x15 were set by hand and made weak baselines):
# SIFT keypoint size 3/4/6/8/12/16 px: 0.396/0.454/0.494/0.504/0.469/0.405;
# NCC patch 7/11/15/21/31/41/51/63/81/101/127 px: 0.148/0.256/0.327/0.388/0.456/0.479/0.481/
# 0.496/0.499/0.508/0.502.
SIFT_KEYPOINT_SIZE_PX = 8.0
NCC_PATCH_PX = 101


def match_sift(image_a: np.ndarray, image_b: np.ndarray, queries_px: np.ndarray,
               truth_px: np.ndarray, keypoint_size_px: float = SIFT_KEYPOINT_SIZE_PX,
               grid_step_px: int = 1):
    """OpenCV SIFT (Lowe 2004) descriptors, upright (angle 0: the views are not rotated), at the
    query pixels, matched by L2 against SIFT descriptors on a dense grid of B; the match is
    refined to sub-pixel like the descriptor net's (a parabola through the squared distances
    around the grid minimum, matching.subpixel_minimum), so all methods are scored alike."""
    import cv2
    sift = cv2.SIFT_create()
    grey_a, grey_b = _grey(image_a), _grey(image_b)
    height, width = grey_b.shape

    def describe(grey, points):
        keypoints = [cv2.KeyPoint(float(x), float(y), keypoint_size_px, 0.0) for x, y in points]
        kept, desc = sift.compute(grey, keypoints)
        if len(kept) != len(keypoints):
            raise RuntimeError('SIFT dropped keypoints; cannot align descriptors')
        return torch.from_numpy(desc.astype(np.float32))
    grid_y, grid_x = np.mgrid[0:height:grid_step_px, 0:width:grid_step_px]
    grid_hw = grid_y.shape
    grid = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1).astype(np.float32)
    desc_grid = describe(grey_b, grid)                                  # (M,128)
    desc_q = describe(grey_a, queries_px)
    desc_t = describe(grey_b, np.clip(truth_px, 0, [width - 1, height - 1]))
    grid_sq = desc_grid.pow(2).sum(1)
    matches, fractions = [], []
    for start in range(0, len(desc_q), 128):
        q = desc_q[start:start + 128]
        dist2 = q.pow(2).sum(1, keepdim=True) + grid_sq[None] - 2.0 * q @ desc_grid.t()
        best = dist2.argmin(1)
        x, y = subpixel_minimum(dist2.view(len(q), *grid_hw),
                                torch.div(best, grid_hw[1], rounding_mode='floor'),
                                best % grid_hw[1])
        matches.append(torch.stack([x, y], 1).numpy() * grid_step_px)
        truth_d2 = (q - desc_t[start:start + 128]).pow(2).sum(1)
        fractions.append((dist2 < truth_d2[:, None]).float().mean(1).numpy())
    return np.concatenate(matches), np.concatenate(fractions)


def match_ncc(image_a: np.ndarray, image_b: np.ndarray, queries_px: np.ndarray,
              truth_px: np.ndarray, patch_px: int = NCC_PATCH_PX):
    """Raw grey patches of A at the queries, zero-mean normalised cross-correlation over all of
    B (cv2.matchTemplate TM_CCOEFF_NORMED); both images reflect-padded so every pixel is a
    candidate centre. The best score is refined to sub-pixel like the other methods' matches
    (matching.subpixel_minimum on minus the score)."""
    import cv2
    half = patch_px // 2
    grey_a = cv2.copyMakeBorder(_grey(image_a), half, half, half, half, cv2.BORDER_REFLECT_101)
    grey_b = cv2.copyMakeBorder(_grey(image_b), half, half, half, half, cv2.BORDER_REFLECT_101)
    height, width = image_b.shape[:2]
    matches = np.zeros((len(queries_px), 2), np.float32)
    fractions = np.zeros(len(queries_px), np.float32)
    for i, (x, y) in enumerate(np.round(queries_px).astype(int)):
        template = grey_a[y:y + patch_px, x:x + patch_px]
        score = cv2.matchTemplate(grey_b, template, cv2.TM_CCOEFF_NORMED)   # (H, W)
        score = np.nan_to_num(score, nan=-1.0)
        row, col = np.unravel_index(int(np.argmax(score)), score.shape)
        x, y = subpixel_minimum(torch.from_numpy(-score)[None], torch.tensor([row]),
                                torch.tensor([col]))
        matches[i] = (float(x[0]), float(y[0]))
        tx, ty = np.clip(np.round(truth_px[i]).astype(int), 0, [width - 1, height - 1])
        fractions[i] = float(np.mean(score > score[ty, tx]))
    return matches, fractions


def evaluate_pair(methods: Dict[str, object], image_a, image_b, queries_px, truth_px):
    """Run each method (name -> callable(image_a, image_b, queries, truth)); return per-method
    summaries plus the raw matches (for figures)."""
    results, raw = {}, {}
    for name, method in methods.items():
        start = time.perf_counter()
        matches, fractions = method(image_a, image_b, queries_px, truth_px)
        seconds = time.perf_counter() - start
        errors = np.linalg.norm(matches - truth_px, axis=1)
        raw[name] = (matches, errors, fractions, seconds)
        results[name] = summarise(errors, fractions, seconds)
    return results, raw


def merge_raw(raws) -> Dict[str, Dict[str, float]]:
    """Per-method summaries over several pairs' raw results."""
    out = {}
    for name in raws[0]:
        errors = np.concatenate([r[name][1] for r in raws])
        fractions = np.concatenate([r[name][2] for r in raws])
        out[name] = summarise(errors, fractions, sum(r[name][3] for r in raws))
    return out


def draw_matches(image_a: np.ndarray, image_b: np.ndarray, queries_px: np.ndarray,
                 matches_px: np.ndarray, errors_px: np.ndarray,
                 truth_px: Optional[np.ndarray] = None, max_lines: int = 80,
                 good_px: float = 3.0) -> np.ndarray:
    """Side-by-side RGB figure: a line from each query in A to its match in B, green within
    good_px of the truth, red else; with ``truth_px``, each wrong match's error is drawn in B as
    a yellow segment from the match to the true pixel (a cross). A caption gives PCK and the
    median error over all queries."""
    import cv2
    canvas = np.concatenate([image_a, image_b], axis=1).copy()
    offset = image_a.shape[1]
    step = max(1, len(queries_px) // max_lines)

    def px(point, dx=0):
        return int(round(point[0])) + dx, int(round(point[1]))
    for i in range(0, len(queries_px), step):
        good = errors_px[i] <= good_px
        colour = (0, 200, 0) if good else (230, 0, 0)
        cv2.line(canvas, px(queries_px[i]), px(matches_px[i], offset), colour, 1, cv2.LINE_AA)
        cv2.circle(canvas, px(queries_px[i]), 2, colour, -1)
        if truth_px is not None and not good:
            cv2.line(canvas, px(matches_px[i], offset), px(truth_px[i], offset), (255, 220, 0), 1,
                     cv2.LINE_AA)
            cv2.drawMarker(canvas, px(truth_px[i], offset), (255, 220, 0), cv2.MARKER_CROSS, 7)
    caption = (f'{len(queries_px)} queries: within {good_px:g} px {np.mean(errors_px <= good_px):.3f}, '
               f'median error {np.median(errors_px):.2f} px; '
               + ('yellow: wrong match -> truth' if truth_px is not None else ''))
    cv2.putText(canvas, caption, (8, canvas.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def load_model(weights: Optional[str]):
    """The descriptor net (eval mode) and its weights header; see network.load_descriptor_net."""
    from .network import load_descriptor_net
    return load_descriptor_net(weights)


def benchmark(model, image_rgb8: np.ndarray, num_pixels: int = 10, repeats: int = 10,
              normal_radius_px: int = 5, scales=DEFAULT_SCALES) -> Dict[str, float]:
    """Speed at the image's size: descriptor frames/s, and the latency of one request of
    ``num_pixels`` pixels with descriptors already computed (arg-min search + confidence +
    3D point + grasp pose on a synthetic plane depth), as the node serves it: the first request
    on a frame (it also computes the frame's descriptor norms) and a later one. Median of
    repeats.
    CPU time per frame is reported too: on a shared machine wall time includes waiting."""
    from ..memory import RecyclingPool
    from .grasp import grasp_at
    height, width = image_rgb8.shape[:2]
    # As correspondence_node: each frame is computed while the previous one is still held,
    # into the buffer of the one before (RecyclingPool).
    pool = RecyclingPool()
    descriptors = compute_descriptors(model, image_rgb8, scales=scales, pool=pool)  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        descriptors = compute_descriptors(model, image_rgb8, scales=scales, pool=pool)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    rng = np.random.default_rng(0)
    pixels = np.stack([rng.uniform(0, width - 1, num_pixels),
                       rng.uniform(0, height - 1, num_pixels)], 1).astype(np.float32)
    reference = descriptors_at(descriptors, pixels)
    depth = np.full((height, width), 1.0, np.float32)
    from ..geometry import depth_to_points
    intrinsics = (500.0, 500.0, width / 2, height / 2)
    points = depth_to_points(depth, *intrinsics)
    # The node computes the frame's descriptor norms with its first request and keeps them
    # (LiveFrame.norms2): a first request pays for them, later ones on the frame do not.
    first, later = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        norms2 = pixel_norms2(descriptors)
        found = find_best_matches(reference, descriptors, norms2=norms2)
        for xy in found['match_px']:
            grasp_at(points, xy, intrinsics, normal_radius_px)
        first.append(time.perf_counter() - start)
        start = time.perf_counter()
        found = find_best_matches(reference, descriptors, norms2=norms2)
        for xy in found['match_px']:
            grasp_at(points, xy, intrinsics, normal_radius_px)
        later.append(time.perf_counter() - start)
    return {'image_size': f'{width}x{height}', 'threads': torch.get_num_threads(),
            'scales': list(scales), 'descriptor_dim': int(descriptors.shape[0]),
            'descriptor_fps': 1.0 / float(np.median(wall)),
            'descriptor_ms_median': 1000 * float(np.median(wall)),
            'descriptor_cpu_ms_median': 1000 * float(np.median(cpu)),
            # The first request on a frame (the README's figure, the worse case) and later ones.
            f'request_{num_pixels}px_ms_median': 1000 * float(np.median(first)),
            f'request_{num_pixels}px_later_ms_median': 1000 * float(np.median(later)),
            'load_average_1min': os.getloadavg()[0]}
