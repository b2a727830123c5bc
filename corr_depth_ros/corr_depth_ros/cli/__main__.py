import sys

from corr_depth_ros.cli import main

sys.exit(main())
