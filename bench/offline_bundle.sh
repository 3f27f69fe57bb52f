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
# PyAV's manylinux wheel (~40 MB with FFmpeg) would not fit the bundle, and ComfyUI's comfy_api imports av at start-up
# (the stock TorchCompileModel node imports comfy_api): an import stand-in whose every use raises. The benchmarks
# never decode or encode media.
python3 - "$DEST/site" <<'PY'
import pathlib, sys
site = pathlib.Path(sys.argv[1])
stub = (
    '"""Import stand-in for PyAV (bench/offline_bundle.sh): any use raises."""\n'
    "class _Missing:\n"
    "    def __init__(self, *args, **kwargs):\n"
    "        raise ImportError('PyAV is not installed here: this is the benchmark bundle\\'s import stand-in')\n\n\n"
    "def __getattr__(name):\n"
    "    if name.startswith('__'):\n"
    "        raise AttributeError(name)\n"
    "    return type(name, (_Missing,), {})\n"
)
for module in ("av", "av/container", "av/subtitles", "av/subtitles/stream", "av/video", "av/video/reformatter",
               "av/audio", "av/audio/resampler", "av/error", "av/filter", "av/logging"):
    folder = site / module
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text(stub)
PY

if [ -n "$BASE" ]; then
    rm -rf "$DEST/base"
    mkdir -p "$DEST/base"
    git archive "$BASE" | tar -C "$DEST/base" -xf - --exclude=docs --exclude=example_workflows
fi
du -sh "$DEST"/* | sed 's/^/  /'
