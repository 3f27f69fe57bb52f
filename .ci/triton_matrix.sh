#!/usr/bin/env bash
# The generic Triton kernels on the CPU, once per Triton minor version: for each version below, install that Triton
# (no deps: Triton does not depend on torch) into its own directory laid over the CI venv (CPU torch 2.13.0, the
# package and its test extras, as .ci/run builds it), import the package and resolve its backends on the CPU, then
# run tests/int8/test_interpreted_kernels.py and test_interpreted_attention.py under Triton's interpreter
# (TRITON_INTERPRET=1), then compile the kernels for sm_80 ... sm_120 with that Triton's own compiler and ptxas, no GPU
# needed (tests/int8/test_kernel_compile.py, INT8_W8A8_COMPILE_MATRIX=1; two pytest processes, one per half of the
# archs). Prints a summary table; exits non-zero if any version failed (install, import, or a test).
#
#   bash .ci/triton_matrix.sh                      # every version below, with the venv at $VENV (default .venv)
#   TRITON_VERSIONS="3.6.0 3.9.0" bash .ci/triton_matrix.sh
#
# Installed Triton trees are kept in $TRITON_MATRIX_CACHE (about 0.5-1 GB per version) and reused by later runs.
# A PYTHONPATH set by the caller stays on the path, after the Triton overlay.
set -uo pipefail
cd "$(dirname "$0")/.."

# The newest release of each Triton minor, from 3.0 to the newest on PyPI with a cp311 manylinux x86_64 wheel
# (pip index versions triton). The pack's floor is 3.2 (pyproject: triton>=3.2; int8/compat/ MIN_TRITON): below it
# `auto` runs torch_int_mm, and 3.0/3.1 stay here to show the pack imports there and the kernel bodies still hold.
# The one place to change the list.
DEFAULT_TRITON_VERSIONS="3.0.0 3.1.0 3.2.0 3.3.1 3.4.0 3.5.1 3.6.0 3.7.1 3.8.0 3.9.0"
TRITON_VERSIONS="${TRITON_VERSIONS:-$DEFAULT_TRITON_VERSIONS}"

# numpy for each Triton's interpreter (it runs every kernel op in numpy): 3.0/3.1 predate numpy 2 (with numpy 2
# their interpreter silently stores nothing: outputs stay as allocated), and up to 3.6 the interpreter calls int()
# on 1-element arrays, which numpy 2.4 rejects ("only 0-dimensional arrays can be converted to Python scalars").
# Empty: the venv's own numpy.
numpy_for() {
    case "$1" in
        3.0.*|3.1.*) echo "numpy==1.26.4" ;;
        3.2.*|3.3.*|3.4.*|3.5.*|3.6.*) echo "numpy==2.3.5" ;;
        *) echo "" ;;
    esac
}

VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then  # standalone run: build the CI venv as .ci/run does
    python3 -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q torch==2.13.0
    "$PY" -m pip install -q -e ".[test]"
fi
PYTAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
CACHE="${TRITON_MATRIX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/comfy-int8-w8a8/triton-matrix}/$PYTAG"
mkdir -p "$CACHE"

# The archs of the first compile process (the second takes the rest: sm_90 with the Hopper-only kernels, sm_100).
COMPILE_SHARD_A="sm_80 or sm_86 or sm_89 or sm_120"

# "P passed / F failed / S skipped" from the pytest summary lines ("... 3 passed, 1 skipped in 2.1s") of a log,
# summed (a log may hold several runs); errors count as failed.
pytest_counts() {
    grep -E '[0-9]+ (passed|failed|skipped|errors?|deselected).* in [0-9.]+s' "$1" \
        | grep -oE '[0-9]+ (passed|failed|skipped|errors?)' \
        | awk '{n[$2] += $1} END {printf "%d passed / %d failed / %d skipped", n["passed"],
                                  n["failed"] + n["error"] + n["errors"], n["skipped"]}'
}

declare -a SUMMARY=()
FAILED_ANY=0
MATRIX_START=$SECONDS

for v in $TRITON_VERSIONS; do
    start=$SECONDS
    overlay="$CACHE/triton-$v"
    np="$(numpy_for "$v")"
    echo "=== triton $v${np:+ (+ $np)}"
    # 1. Triton (and the numpy its interpreter needs) into the overlay, once.
    if [ ! -f "$overlay/.complete" ] || [ "$(cat "$overlay/.complete")" != "triton==$v $np" ]; then
        rm -rf "$overlay"
        # shellcheck disable=SC2086  # $np is empty or one requirement
        if ! "$PY" -m pip install -q --no-deps --target "$overlay" "triton==$v" $np; then
            SUMMARY+=("triton $v: install failed")
            FAILED_ANY=1
            continue
        fi
        echo "triton==$v $np" > "$overlay/.complete"
    fi
    installed=$((SECONDS - start))

    # 2. Import the package and resolve its backends on the CPU (no interpreter: what a CPU user gets).
    if ! PYTHONPATH="$overlay${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c "
import torch
import triton
import comfy_int8_w8a8
from comfy_int8_w8a8.int8.backends.registry import backend_names, get_backend, resolve_backend
assert triton.__version__ == '$v', triton.__version__
print('triton', triton.__version__, '| auto on cpu ->', resolve_backend('auto', 'cpu').name)
for name in backend_names():
    if name != 'auto':
        print('  ', name, ':', get_backend(name).unavailable_reason(torch.device('cpu')) or 'available')
"; then
        SUMMARY+=("triton $v: import / backend resolution FAILED (installed in ${installed}s)")
        FAILED_ANY=1
        continue
    fi

    # 3. The kernels under the interpreter. The config is named explicitly with the tests as rootdir: pytest's
    # collection of the repo root's __init__.py fails in a checkout whose folder is no Python identifier.
    log="$(mktemp)"
    PYTHONPATH="$overlay${PYTHONPATH:+:$PYTHONPATH}" TRITON_INTERPRET=1 "$PY" -m pytest -c pyproject.toml \
        --rootdir tests -p no:cacheprovider -q -W ignore::DeprecationWarning tests/int8/test_interpreted_kernels.py \
        tests/int8/test_interpreted_attention.py 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    interp="$(pytest_counts "$log")"
    rm -f "$log"
    interp_s=$((SECONDS - start - installed))

    # 4. The kernels compiled for each arch (no interpreter), in two processes over the archs, each with a fresh
    # Triton cache (a cached kernel would not show this Triton compiling it).
    work="$(mktemp -d)"
    shards=("$COMPILE_SHARD_A" "not ($COMPILE_SHARD_A)")
    pids=()
    for i in 0 1; do
        PYTHONPATH="$overlay${PYTHONPATH:+:$PYTHONPATH}" TRITON_CACHE_DIR="$work/cache$i" INT8_W8A8_COMPILE_MATRIX=1 \
            "$PY" -m pytest -c pyproject.toml --rootdir tests -p no:cacheprovider -q -W ignore::DeprecationWarning \
            tests/int8/test_kernel_compile.py tests/int8/test_attention_compile.py -k "${shards[i]}" > "$work/$i.log" 2>&1 &
        pids+=($!)
    done
    crc=0
    for i in 0 1; do
        wait "${pids[i]}" || crc=$?
        cat "$work/$i.log"
    done
    compiled="$(cat "$work"/*.log > "$work/all" && pytest_counts "$work/all")"
    rm -rf "$work"
    line="triton $v: interp $interp; compile $compiled (install ${installed}s, interp ${interp_s}s, total $((SECONDS - start))s)"
    if [ "$rc" -ne 0 ] || [ "$crc" -ne 0 ]; then
        FAILED_ANY=1
        line="$line  <-- FAILED (pytest exit: interp $rc, compile $crc)"
    fi
    SUMMARY+=("$line")
done

echo
echo "Triton matrix (interp: TRITON_INTERPRET=1; compile: sm_80..sm_120 without a GPU; CPU torch $("$PY" -c 'import torch; print(torch.__version__)'), $((SECONDS - MATRIX_START))s):"
for line in "${SUMMARY[@]}"; do
    echo "  $line"
done
exit "$FAILED_ANY"
