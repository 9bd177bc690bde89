# Sourced by hvdl's launch scripts: sets `root` to the repository and activates <repo>/.venv (or
# HVDL_VENV) unless a virtual environment is active already.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${HVDL_VENV:-$root/.venv}
if [[ -z ${VIRTUAL_ENV:-} && -f $venv/bin/activate ]]; then
    source "$venv/bin/activate"
fi
