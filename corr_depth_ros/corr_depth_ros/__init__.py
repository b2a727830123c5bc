"""corr_depth_ros: learned depth and dense correspondences for ROS 2.

Layers (imports point one way only):
  core/           torch + numpy only: geometry, models, matching, synthetic data, training, evaluation
  conversions.py  the one place where ROS messages become arrays and back
  nodes/          ROS wiring: parameters, subscriptions, publishers, services
  cli/            the `corr_depth` command (synth, train, eval, export, process-bag)
"""

__version__ = '0.1.0'
