#!/usr/bin/env bash
# Install what annoboot's default job and its tests need on a fresh Debian machine:
# the Fashion-MNIST package (real images, offline) and the Python package with its dependencies.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# Real images that install offline: Fashion-MNIST (the default job), and two captioned sets
# (Open Clip Art, Tux Paint stamps) for CLIP/ABCLIP and their tests.
missing=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
[ -d /usr/share/openclipart/png ] || missing+=(openclipart-png)
[ -d /usr/share/openclipart/svg ] || missing+=(openclipart-svg)
[ -d /usr/share/tuxpaint/stamps ] || missing+=(tuxpaint-stamps-default)
if [ ${#missing[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# torch/torchvision first, pinned to the builds that work on CPU here (they install from disk);
# elsewhere any torch >= 2.4 with a matching torchvision works.
if ! python3 -c "import torch, torchvision" 2>/dev/null; then
    python3 -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
python3 -m pip install -q -e ".[dev]"
python3 -c "import annoboot, torch; print(f'annoboot {annoboot.__version__} installed (torch {torch.__version__})')"
