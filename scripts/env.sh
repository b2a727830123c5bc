# Source me (bash): the environment for building, testing and running corr_depth_ros from this repo.
# Used by every Makefile recipe; also handy by hand: `source scripts/env.sh`.
if [ -z "${BASH_VERSION:-}" ]; then
  # zsh and sh have no BASH_SOURCE: the paths below would point elsewhere, silently.
  echo "scripts/env.sh: source it from bash (zsh, sh: run bash first)" >&2
  return 1 2>/dev/null || exit 1
fi
_cdr_root=$(CDPATH= cd -- "$(dirname "${BASH_SOURCE[0]}")/.." >/dev/null && pwd)
_cdr_venv=${VENV:-$_cdr_root/.venv}
case "$_cdr_venv" in /*) ;; *) _cdr_venv=$_cdr_root/$_cdr_venv ;; esac
export VIRTUAL_ENV=$_cdr_venv
export PATH=$_cdr_venv/bin:$PATH
if [ -z "${ROS_DISTRO:-}" ]; then
  # ROS from PyPI wheels: the venv is the underlay prefix that ament and CMake search.
  export AMENT_PREFIX_PATH=$_cdr_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}
  export CMAKE_PREFIX_PATH=$_cdr_venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
fi
# Large images over Fast DDS: see config/fastdds_large_data.xml and the README.
export FASTRTPS_DEFAULT_PROFILES_FILE=${FASTRTPS_DEFAULT_PROFILES_FILE:-$_cdr_root/corr_depth_ros/config/fastdds_large_data.xml}
if [ -f "$_cdr_root/install/setup.bash" ]; then
  # shellcheck disable=SC1091
  source "$_cdr_root/install/setup.bash"
  # `ros2 run corr_depth_ros corr_depth ...` needs ros2cli; put the console scripts on PATH too.
  export PATH=$_cdr_root/install/corr_depth_ros/lib/corr_depth_ros:$PATH
fi
unset _cdr_root _cdr_venv
