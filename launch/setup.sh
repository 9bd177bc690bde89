#!/usr/bin/env bash
# Create or reuse hvdl's virtual environment; idempotent, a second call takes seconds.
#
#   bash launch/setup.sh            # then: source .venv/bin/activate
#
# Environment:
#   HVDL_VENV           where the environment lives            (default: <repo>/.venv)
#   HVDL_TORCH          pip spec for torch, or "keep" to use the torch already importable in the
#                       environment (a site's CUDA build, see HVDL_SYSTEM_SITE_PACKAGES)
#                                                              (default: torch==2.13.0, CPU wheel)
#   HVDL_TORCH_INDEX    extra pip index for torch, e.g. a CUDA wheel index (default: none)
#   HVDL_SYSTEM_SITE_PACKAGES=1   let the environment see the site's packages (module-loaded torch)
#   HOROVOD_GPU_OPERATIONS=NCCL   build Horovod's GPU collectives (needs CUDA and NCCL)
#   HVDL_CACHE          where built Horovod wheels are cached  (default: ~/.cache/hvdl)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${HVDL_VENV:-$root/.venv}
torch_spec=${HVDL_TORCH:-torch==2.13.0}
cache=${HVDL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hvdl}
horovod_version=0.28.1
python=${PYTHON:-python3}

say() { echo "[hvdl setup] $*" >&2; }

# --- system packages: Open MPI, CMake, a C++ compiler -----------------------------------------
need_apt=()
command -v mpicc >/dev/null || need_apt+=(openmpi-bin libopenmpi-dev)
command -v cmake >/dev/null || need_apt+=(cmake)
command -v g++ >/dev/null || need_apt+=(g++)
if ((${#need_apt[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        say "installing ${need_apt[*]} with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        say "missing system packages: ${need_apt[*]}"
        say "install them (Debian/Ubuntu: sudo apt-get install ${need_apt[*]}; on a cluster:"
        say "module load openmpi cmake gcc) and run this script again"
        exit 1
    fi
fi

# --- the virtual environment ------------------------------------------------------------------
if [[ ! -x $venv/bin/python ]]; then
    say "creating $venv"
    flags=()
    [[ ${HVDL_SYSTEM_SITE_PACKAGES:-0} == 1 ]] && flags+=(--system-site-packages)
    "$python" -m venv "${flags[@]}" "$venv"
fi
py=$venv/bin/python
pip=("$py" -m pip --disable-pip-version-check -q)

# A stamp of everything that decides the environment's contents: same stamp, nothing to do.
stamp_file=$venv/.hvdl-stamp
stamp=$(cat "$root/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)
stamp="$stamp torch=$torch_spec gpu=${HOROVOD_GPU_OPERATIONS:-none}"
if [[ -f $stamp_file && $(cat "$stamp_file") == "$stamp" ]]; then
    exit 0
fi

# --- torch ------------------------------------------------------------------------------------
if [[ $torch_spec != keep ]]; then
    index=()
    [[ -n ${HVDL_TORCH_INDEX:-} ]] && index=(--extra-index-url "$HVDL_TORCH_INDEX")
    say "installing $torch_spec"
    "${pip[@]}" install "${index[@]}" "$torch_spec"
fi
torch_version=$("$py" -c 'import torch; print(torch.__version__)')
py_tag=$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')

# --- the project and its Python dependencies --------------------------------------------------
say "installing hvdl and its dependencies"
"${pip[@]}" install -e "$root[test]"

# --- Horovod, built once per (Horovod, torch, Python, GPU ops) and cached as a wheel ------------
ops=${HOROVOD_GPU_OPERATIONS:-cpu}
wheel_dir=$cache/wheels/horovod-$horovod_version-torch$torch_version-$py_tag-$ops
if ! compgen -G "$wheel_dir/horovod-*.whl" >/dev/null; then
    say "building Horovod $horovod_version against torch $torch_version (takes several minutes)"
    "$root/launch/build-horovod.sh" "$py" "$horovod_version" "$wheel_dir"
fi
"${pip[@]}" install "$wheel_dir"/horovod-*.whl
# Read the whole report before matching: `grep -q` would close the pipe at the first match and
# horovodrun, still printing, would fail on the broken pipe.
build=$("$venv/bin/horovodrun" --check-build)
grep -q '\[X\] PyTorch' <<<"$build" || {
    say "Horovod was built without PyTorch support; remove $wheel_dir and run again"
    exit 1
}
echo "$stamp" >"$stamp_file"
say "ready: $venv"
