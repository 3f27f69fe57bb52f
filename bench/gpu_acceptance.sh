#!/usr/bin/env bash
# GPU acceptance runs on one CUDA machine, from the repository root:
#   bench/gpu_acceptance.sh tests            the GPU test suite (every test that needs no running ComfyUI server)
#   bench/gpu_acceptance.sh ab BASE_TREE     kernel bench + Flux-dev e2e bench of BASE_TREE (a checkout of an older
#                                            commit) and of this tree (e2e: ROUNDS interleaved processes per side,
#                                            default 2; E2E_VARIANTS overrides the variant list); kernels-ab and
#                                            e2e-ab run one half
#   bench/gpu_acceptance.sh forced PATHS     the GPU test suite and the portable kernel rows with the pack forced to
#                                            each non-Hopper path (PATHS: e.g. "sm_80 sm_89")
#   bench/gpu_acceptance.sh bench NAME ARGS  one comfy-int8 bench (kernels, attention, defaults, families, ...) with
#                                            ARGS, its output folder/file under OUT_DIR, its log as bench_NAME.txt
# Needs: python3 with torch + Triton; COMFYUI_PATH (a ComfyUI checkout) for the e2e bench and the ComfyUI-ops tests;
# EXTRA_SITE (optional) prepended to PYTHONPATH for packages the machine lacks (pytest, pytest-xdist, comfy-kitchen);
# bench/offline_bundle.sh builds both for a machine without internet.
# Writes logs and JSON under OUT_DIR (default gpu_results/). Where only a few files come back from the machine,
# set BUNDLE=/path/results.tgz: the folder is re-packed into it after every stage (a run cut off by its time limit
# still leaves the stages it finished).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT_DIR:-gpu_results}"
mkdir -p "$OUT_DIR"
ROOT="$PWD"
COMFY="${COMFYUI_PATH:-}"
SITE="${EXTRA_SITE:-}"
WORKERS="${WORKERS:-8}"

bundle() {  # re-pack OUT_DIR into $BUNDLE, if set
    [ -n "${BUNDLE:-}" ] && tar czf "$BUNDLE" -C "$(dirname "$OUT_DIR")" "$(basename "$OUT_DIR")"
    return 0
}

# The repo root is the package; an import path that maps the import name onto a tree.
pkg_path() {  # $1 tree, $2 name of the link folder
    mkdir -p "/tmp/$2"
    ln -sfn "$1" "/tmp/$2/comfy_int8_w8a8"
    echo "/tmp/$2${COMFY:+:$COMFY}${SITE:+:$SITE}"
}
NEW_PATH="$(pkg_path "$ROOT" pk_new)"

gpu_tests() {  # $1 log name, rest: extra env assignments
    local log="$1"; shift
    env "$@" PYTHONPATH="$NEW_PATH" python3 -m pytest -q -rfE --tb=short --durations=30 -p no:cacheprovider -p no:benchmark -n "$WORKERS" tests \
        --ignore=tests/integration --ignore=tests/formats/test_safetensors_io.py > "$OUT_DIR/$log" 2>&1
    bundle
    tail -25 "$OUT_DIR/$log"
}

case "${1:-}" in
    tests)
        gpu_tests gpu_pytest.txt
        ;;
    ab|kernels-ab|e2e-ab)
        # Fair A/B: no tuning decisions from disk on either side (the base tree has no store), interleaved rounds of
        # separate processes (base, new, base, new, ...) so the spread between rounds shows the run-to-run noise.
        export INT8_W8A8_TUNING_CACHE=off
        base="$2"
        BASE_PATH="$(pkg_path "$(cd "$base" && pwd)" pk_base)"
        side_path() { [ "$1" = base ] && echo "$BASE_PATH" || echo "$NEW_PATH"; }
        if [ "$1" != e2e-ab ]; then
            for side in base new; do
                PYTHONPATH="$(side_path $side)" python3 -m comfy_int8_w8a8.cli.main bench kernels --quick \
                    --out "$OUT_DIR/kernels_$side" > "$OUT_DIR/kernels_$side.txt" 2>&1
                bundle
                tail -30 "$OUT_DIR/kernels_$side.txt"
            done
        fi
        if [ "$1" != kernels-ab ]; then
            # shellcheck disable=SC2086 - E2E_VARIANTS is a word list
            for round in $(seq 1 "${ROUNDS:-2}"); do
                for side in base new; do
                    PYTHONPATH="$(side_path $side)" timeout "${E2E_TIMEOUT_S:-300}" python3 -m comfy_int8_w8a8.cli.main \
                        bench e2e --out "$OUT_DIR/e2e_${side}_r$round.json" \
                        --variants ${E2E_VARIANTS:-bf16 bf16+stock_compile comfy_int8 ours loader_ops+node_compile} \
                        > "$OUT_DIR/e2e_${side}_r$round.txt" 2>&1
                    rc=$?
                    bundle
                    echo "== e2e $side round $round (rc $rc)"; grep -E "^\|" "$OUT_DIR/e2e_${side}_r$round.txt" | head -12
                done
            done
        fi
        ;;
    forced)
        shift
        logs=()
        for arch in "$@"; do
            gpu_tests "gpu_pytest_forced_$arch.txt" INT8_W8A8_ARCH="$arch" INT8_W8A8_NO_TMA=1 INT8_W8A8_NO_GLUON=1 \
                INT8_W8A8_NO_PDL=1 INT8_W8A8_NO_DIRECT_LAUNCH=1
            logs+=(--pytest-log "$arch=$OUT_DIR/gpu_pytest_forced_$arch.txt")
        done
        PYTHONPATH="$NEW_PATH" python3 -m comfy_int8_w8a8.bench.portable --paths "$@" "${logs[@]}" \
            --out "$OUT_DIR/portable.json" 2>&1 | tail -60
        bundle
        ;;
    bench)
        name="$2"; shift 2
        case "$name" in  # where each bench writes: a folder (--out DIR) or a file (--out FILE)
            kernels|attention) out="$OUT_DIR/$name" ;;
            *) out="$OUT_DIR/$name.json" ;;
        esac
        PYTHONPATH="$NEW_PATH" python3 -m comfy_int8_w8a8.cli.main bench "$name" --out "$out" "$@" \
            > "$OUT_DIR/bench_$name.txt" 2>&1
        rc=$?
        bundle
        tail -40 "$OUT_DIR/bench_$name.txt"
        exit $rc
        ;;
    *)
        sed -n '2,12p' "$0"
        exit 2
        ;;
esac
