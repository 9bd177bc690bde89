#!/usr/bin/env bash
# Build a Horovod wheel from its source distribution with PyTorch, MPI and Gloo.
#
#   launch/build-horovod.sh PYTHON VERSION OUT_DIR
#
# Horovod 0.28.1 builds as C++14, but torch >= 2.1 headers need C++17: the CMake files are
# raised to C++17 (the upstream fix, horovod PR #3998, is unreleased). CMake >= 4 also needs
# CMAKE_POLICY_VERSION_MINIMUM for Horovod's old cmake_minimum_required.
set -euo pipefail
py=$1 version=$2 out=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$py" -m pip download -q --no-deps --no-binary :all: -d "$work" "horovod==$version"
tar -xzf "$work/horovod-$version.tar.gz" -C "$work"
src=$work/horovod-$version
sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/' \
    "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
grep -q 'CMAKE_CXX_STANDARD 17' "$src/horovod/torch/CMakeLists.txt" || {
    echo "could not raise Horovod's torch build to C++17" >&2
    exit 1
}
export CMAKE_POLICY_VERSION_MINIMUM=3.5
export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1
export HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
export MAKEFLAGS="-j$(nproc)" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
"$py" -m pip wheel -q --no-build-isolation --no-deps -w "$work/dist" "$src"
mkdir -p "$out"
mv "$work"/dist/horovod-*.whl "$out/"
