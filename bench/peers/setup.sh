#!/usr/bin/env bash
# Make the peers' virtual environments (StarDist, Cellpose) from the pinned requirement files beside
# this script. Idempotent: an existing venv is left as it is (delete it to rebuild). Never part of `make test`.
# Usage: bash bench/peers/setup.sh [stardist] [cellpose]   (default: both)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PEER_PYTHON:-python3.11}"
unset PIP_CONSTRAINT  # the project's pins (constraints.txt) are not the peers'; theirs are in requirements-*.txt
peers=("$@")
[ ${#peers[@]} -eq 0 ] && peers=(stardist cellpose)

make_venv() {
    local peer="$1" venv="$here/.venv-$1" req="$here/requirements-$1.txt"
    # The marker is written last, so a venv whose install broke off is made again, not skipped.
    if [ -f "$venv/.complete" ]; then
        echo "$peer: $venv exists, skipped"
        return
    fi
    echo "$peer: making $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    # torch first, on its own, so the pinned CPU build is taken before cellpose asks for any torch.
    local torch_pin
    torch_pin="$(grep -E '^torch==' "$req" || true)"
    if [ -n "$torch_pin" ]; then "$venv/bin/python" -m pip install -q "$torch_pin"; fi
    "$venv/bin/python" -m pip install -q -r "$req"
    touch "$venv/.complete"
    echo "$peer: ready"
}

for peer in "${peers[@]}"; do
    case "$peer" in
        stardist|cellpose) make_venv "$peer" ;;
        *) echo "unknown peer: $peer (choose stardist, cellpose)" >&2; exit 2 ;;
    esac
done
