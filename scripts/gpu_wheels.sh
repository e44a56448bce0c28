#!/usr/bin/env bash
# The wheels scripts/gpu_check.sh needs on the GPU machine that its image lacks (the device tool's KINDS.md lists
# the image: Python 3.12, torch, timm, huggingface_hub, tokenizers, triton, but transformers 5.17, older than our
# floor, and no open_clip or liger-kernel): transformers, open_clip_torch (FILA's ConvNeXt-L) with ftfy and wcwidth,
# and liger-kernel. Versions are uv.lock's, for the device's CPython 3.12 on x86-64 Linux, so the GPU measures the
# code as tested here. flash-attn publishes no wheel on PyPI, so its rows there say it is not installed.
#   bash scripts/gpu_wheels.sh [FOLDER]          # default .whl (git-ignored): the device tool carries it
#   WHEELS=.whl bash scripts/gpu_check.sh        # there
set -euo pipefail
cd "$(dirname "$0")/.."
FOLDER=${1:-.whl}
PACKAGES="transformers open-clip-torch ftfy wcwidth liger-kernel"
# uv.lock's pins whose environment markers hold on the device (CPython 3.12, Linux, x86-64).
pins=$(uv export --frozen --no-hashes --no-emit-project --all-extras | uv run --frozen --no-sync python -c '
import sys
from packaging.markers import Marker
from packaging.utils import canonicalize_name
device = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "os_name": "posix",
          "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
          "platform_python_implementation": "CPython"}
wanted = {canonicalize_name(name) for name in sys.argv[1:]}
pins = {}
for line in sys.stdin:
    requirement, _, marker = line.strip().partition(" ; ")
    name, separator, version = requirement.partition("==")
    if separator and canonicalize_name(name) in wanted and (not marker or Marker(marker).evaluate(device)):
        pins[canonicalize_name(name)] = requirement
missing = wanted - pins.keys()
if missing:
    sys.exit(f"[gpu_wheels] error: uv.lock pins none of {sorted(missing)} for the device")
print(" ".join(pins[name] for name in sorted(pins)))
' $PACKAGES)
rm -rf "$FOLDER"  # one version of each: two would stop the install there
uv run --frozen --no-sync python -m pip download --quiet --no-deps --only-binary=:all: --dest "$FOLDER" --python-version 3.12 \
  --implementation cp --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 $pins
echo "[gpu_wheels] $FOLDER: $pins ($(du -sh "$FOLDER" | cut -f1))"
