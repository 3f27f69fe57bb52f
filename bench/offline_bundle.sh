#!/usr/bin/env bash
# Bundle what bench/gpu_acceptance.sh needs on a GPU machine that has torch and Triton but no internet:
#   bash bench/offline_bundle.sh [DEST] [BASE_COMMIT]
#   DEST/comfyui  a copy of $COMFYUI_PATH without its tests, models, custom nodes, API nodes and tokenizer data (~9 MB)
#   DEST/site     packages the GPU runs import, unpacked for CPython $PYVER (default 3.12) on manylinux x86-64:
#                 comfy-kitchen 0.2.40 (the peer's kernels), comfy-aimdo, einops, psutil, torchsde, trampoline,
#                 sageattention 1.0.6 (peer), pytest + pytest-xdist
#   DEST/base     (with BASE_COMMIT) that commit of this repository, for `gpu_acceptance.sh ab DEST/base`
# Then on the machine: COMFYUI_PATH=DEST/comfyui EXTRA_SITE=DEST/site bash bench/gpu_acceptance.sh ...
# DEST defaults to .carry/ (ignored by git). Needs pip and a package index; ~60 MB in all.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-.carry}"
BASE="${2:-}"
PYVER="${PYVER:-3.12}"
: "${COMFYUI_PATH:?set COMFYUI_PATH to a ComfyUI checkout}"
mkdir -p "$DEST"

rm -rf "$DEST/comfyui"
mkdir -p "$DEST/comfyui"
tar -C "$COMFYUI_PATH" --exclude=.git --exclude=tests --exclude=tests-unit --exclude=comfy_api_nodes \
    --exclude='custom_nodes/*' --exclude='models/*' --exclude='input/*' --exclude='output/*' --exclude=blueprints \
    --exclude='*.log' -cf - . | tar -C "$DEST/comfyui" -xf -
# the tokenizers' vocabularies: text encoders are never built by the benchmarks (random conditioning)
find "$DEST/comfyui/comfy/text_encoders" "$DEST/comfyui/comfy/sd1_tokenizer" -type f ! -name '*.py' -delete 2>/dev/null || true

rm -rf "$DEST/site"
python3 -m pip install -q --no-deps --target "$DEST/site" --python-version "$PYVER" --implementation cp \
    --only-binary=:all: --platform manylinux_2_28_x86_64 \
    comfy-kitchen==0.2.40 comfy-aimdo==0.4.10 einops psutil torchsde trampoline sageattention==1.0.6 \
    pytest pluggy iniconfig pytest-xdist execnet
rm -f "$DEST/site/comfy_kitchen/backends/hip/_C.abi3.so"  # AMD only, 10+ MB

if [ -n "$BASE" ]; then
    rm -rf "$DEST/base"
    mkdir -p "$DEST/base"
    git archive "$BASE" | tar -C "$DEST/base" -xf - --exclude=docs --exclude=example_workflows
fi
du -sh "$DEST"/* | sed 's/^/  /'
