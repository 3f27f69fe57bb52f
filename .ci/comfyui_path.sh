#!/usr/bin/env bash
# Print the ComfyUI the integration tests run against: COMFYUI_PATH when set, else the first of /opt/ComfyUI and
# ../shared/comfyui (beside this checkout: the read-only ComfyUI v0.29.0 of the build machines) that holds one,
# else /opt/ComfyUI (the tests then say how to provide one). tests/integration/conftest.py looks in the same order.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${COMFYUI_PATH:-}" ]; then
    echo "$COMFYUI_PATH"
    exit 0
fi
for candidate in /opt/ComfyUI "$(cd .. && pwd)/shared/comfyui"; do
    if [ -f "$candidate/main.py" ]; then
        echo "$candidate"
        exit 0
    fi
done
echo /opt/ComfyUI
