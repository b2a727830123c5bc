# corr_depth_ros developer entry points. On a fresh clone:
#   make demo   - set everything up, build, and run stereo depth on the embedded synthetic stream
#   make test   - set everything up, build, and run the whole test suite (core + real ROS over DDS)
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
export VENV TORCH_SPEC
ENV := source scripts/env.sh
# Wheels-based ROS needs CMake pointed at the venv's interpreter (its FindPython would pick the system one).
CMAKE_ARGS := -DBUILD_TESTING=OFF $(if $(ROS_DISTRO),,-DPython3_EXECUTABLE=$(abspath $(VENV))/bin/python)
PYTEST_ARGS ?=

.PHONY: setup build test test-core test-ros demo bench eval clean distclean bench-gpu

setup:
	@bash scripts/setup_env.sh

# `python -m colcon` (the venv's interpreter), not a `colcon` found on PATH: colcon writes its
# own interpreter into the nodes' #! lines, and only the venv has torch and the other deps.
build: setup
	@$(ENV) && python -m colcon build --symlink-install --base-paths corr_depth_interfaces corr_depth_ros \
	    --event-handlers console_cohesion- summary+ --cmake-args $(CMAKE_ARGS) >/dev/null \
	  || { echo "colcon build failed (log/latest_build has the details):"; \
	       for f in log/latest_build/*/stderr.log; do [ -s "$$f" ] && { echo "--- $$f"; tail -n 40 "$$f"; }; done; exit 1; }
	@echo "build: ok (install/)"

test: build
	@$(ENV) && python -m pytest corr_depth_ros/test $(PYTEST_ARGS)

test-core: build
	@$(ENV) && python -m pytest corr_depth_ros/test -m "not ros" $(PYTEST_ARGS)

test-ros: build
	@$(ENV) && python -m pytest corr_depth_ros/test -m ros $(PYTEST_ARGS)

demo: build
	@$(ENV) && python -m corr_depth_ros.demo --out demo_output

bench: build
	@$(ENV) && python scripts/bench_dds_qos.py --json bench_output/dds_qos.json
	@$(ENV) && python scripts/bench_stereo_node.py --json bench_output/stereo_node.json
	@$(ENV) && python scripts/bench_correspondence_node.py --json bench_output/correspondence_node.json
	@$(ENV) && python scripts/bench_synth.py --json bench_output/synth.json

# On a machine with CUDA: every model's GPU figures in one run (runs on the CPU elsewhere).
bench-gpu: build
	@$(ENV) && python scripts/bench_gpu.py --json bench_output/gpu.json

# Accuracy and speed of the shipped models against their baselines (JSON + figures in eval_output/:
# each evaluation writes its figure beside its JSON, out.json -> out.png).
eval: build
	@$(ENV) && corr_depth eval stereo --dataset motorcycle --json eval_output/stereo_motorcycle.json
	@$(ENV) && corr_depth eval stereo --dataset synthetic --count 16 --json eval_output/stereo_synthetic.json
	@$(ENV) && corr_depth eval mono --json eval_output/mono.json --figure eval_output/mono_motorcycle.png
	@$(ENV) && corr_depth eval corr --dataset motorcycle --benchmark --json eval_output/corr_motorcycle.json
	@$(ENV) && corr_depth eval corr --dataset synthetic --json eval_output/corr_synthetic.json
	@$(ENV) && corr_depth eval corr --dataset synthetic --queries-on objects \
	    --json eval_output/corr_synthetic_objects.json

clean:
	rm -rf build install log demo_output bench_output eval_output

# Only a venv this setup made (a VENV exported for another project is left alone).
distclean: clean
	@if [ -f "$(VENV)/.corr_depth_setup" ] || [ -f "$(VENV)/.corr_depth_path" ] \
	    || [ "$(abspath $(VENV))" = "$(CURDIR)/.venv" ]; then rm -rf -- "$(VENV)"; \
	 else echo "distclean: $(VENV) was not made by this setup: left alone"; fi
