"""Self-supervised monocular depth: Godard, Mac Aodha, Brostow, "Unsupervised Monocular Depth
Estimation with Left-Right Consistency", CVPR 2017 (arXiv:1609.03677).

One file per stage:
  network.py      left image -> left + right disparity at 4 scales (fractions of width)
  warp.py         differentiable horizontal resampling of the other view (grid_sample)
  losses.py       appearance (SSIM + L1), edge-aware smoothness, left-right consistency
  postprocess.py  the paper's mirrored-input averaging ("pp")
  inference.py    resize, predict, disparity -> metric or relative depth; weights loading
  data.py         rendered training pairs (fixed rig), augmentation
  train.py        `corr_depth train mono` (core.training.fit; images only, no depth labels)
  metrics.py      AbsRel, SqRel, RMSE, RMSE log, deltas; median / scale-and-shift alignment
  evaluate.py     `corr_depth eval mono`: Motorcycle zero-shot, held-out synthetic, ablation,
                  speed, figure
"""

# The paper's "pp" on by default, for the node, process-bag and the CLI alike (one place): on
# Motorcycle the shipped model measured median-scaled AbsRel 0.231 with it, 0.266 without, at
# 26-30 frames/s (384x256, 2-core CPU, 2 threads) instead of 53-57.
POST_PROCESS_DEFAULT = True
# baseline_m of the mono node and process-bag's --baseline-m, metres (0: from the weights).
BASELINE_RANGE_M = (0.0, 10.0)
