#!/usr/bin/env bash
# Install everything autoprune needs on a fresh Debian machine with Python 3.11:
# the Fashion-MNIST dataset (Debian package) and the pinned Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q dataset-fashion-mnist
fi

PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test,postgres,timm]"
