#!/usr/bin/env bash
# Build (or reuse) the venv that runs the real ComfyUI for tests/integration, and print its path.
# ComfyUI needs torchvision and torchaudio, which the unit venv's CPU torch 2.13.0 has no builds of:
#   torch 2.14.1 + torchvision 0.29.1 (on x86_64 / Python 3.11 pip finds these on local disk),
#   torchaudio 2.11.0 --no-deps (the newest on PyPI; no build exists for torch 2.14, and ComfyUI only needs its
#   pure-Python modules at start-up, which import and run with torch 2.14.1),
#   then ComfyUI's requirements.txt without torch/torchvision/torchaudio, this package (--no-deps -e .) and pytest.
# Reused when its stamp matches (same ComfyUI requirements and same pins); INTEGRATION_VENV overrides the location.
set -euo pipefail
cd "$(dirname "$0")/.."

COMFYUI_PATH="$(bash .ci/comfyui_path.sh)"
VENV="${INTEGRATION_VENV:-.venv-integration}"
PINS="torch==2.14.1 torchvision==0.29.1"
AUDIO_PIN="torchaudio==2.11.0"
STAMP="$VENV/.int8-integration-stamp"

if [ ! -f "$COMFYUI_PATH/requirements.txt" ]; then
    echo "integration_env.sh: no ComfyUI at $COMFYUI_PATH (set COMFYUI_PATH)" >&2
    exit 2
fi
want="$(printf '%s\n%s\n%s\n' "$PINS" "$AUDIO_PIN" "$(cat "$COMFYUI_PATH/requirements.txt")" | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
    "$VENV/bin/python" -m pip install -q --no-deps -e . >&2   # the package may have moved; cheap
    echo "$VENV"
    exit 0
fi

rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >&2
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install -q $PINS >&2
"$VENV/bin/python" -m pip install -q --no-deps "$AUDIO_PIN" >&2
reqs="$(mktemp)"
grep -viE '^(torch|torchvision|torchaudio)([<>=~! ;[]|$)' "$COMFYUI_PATH/requirements.txt" > "$reqs"
"$VENV/bin/python" -m pip install -q -r "$reqs" >&2
rm -f "$reqs"
"$VENV/bin/python" -m pip install -q --no-deps -e . >&2
"$VENV/bin/python" -m pip install -q "pytest>=8" "hypothesis>=6.100" >&2
echo "$want" > "$STAMP"
echo "$VENV"
