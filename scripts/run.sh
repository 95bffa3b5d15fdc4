#!/usr/bin/env bash
# The main job: a single-host vGPU pool on this machine. The controller with its own SQLite
# store, one host agent, and the real GPU where an NVIDIA driver is present (the sim GPU,
# clearly marked, where none is). Prints how to allocate a slice and run a program on it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p vgpu-controller -p vgpu-agent -p vhost-gpu -p vgpu-libcuda
exec target/release/vgpu-controller up "$@"
