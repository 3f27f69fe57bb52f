"""Each fallback of the Triton/GPU feature gate (int8/compat/) on a real GPU: direct launch off, programmatic
dependent launch off, Gluon off, TMA off, and the forced non-Hopper paths (INT8_W8A8_ARCH=sm_89, sm_80; sm_120
routes like Blackwell). Every configuration runs in a fresh process (the switches are read once, the launchers
and autotuners cache per process), on the same inputs, and must

- take the fallback (facts the process reports: capability, PDL flags of the compiled launches, direct entries,
  TMA/Gluon choices, the pointer kernel's config table),
- match the float64 reference within the quantization-step bounds of test_triton_kernels.py,
- give the same bits as the default configuration where the fallback only changes how a kernel is launched or
  which of two bit-identical GEMMs runs (direct launch, PDL, Gluon).
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from comfy_int8_w8a8.int8 import int8_linear_reference, quantize_per_channel, rotate_activation

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
                       reason="needs a CUDA GPU with Triton"),
]

# (name, rows, K, N, bias, hadamard_group, path): each reaches one kernel path on a Hopper GPU by default.
CASES = [
    ("fused_few_rows", 8, 3072, 3072, True, 0, "w8a8"),  # the one-launch quant + split-K kernel
    ("two_kernel_few_rows", 8, 3072, 3072, True, 0, "w8a8_unfused"),  # quant kernel, split-K GEMM with PDL
    ("rotated_few_rows", 8, 3072, 3072, False, 256, "w8a8"),  # rotation kernel, split-K (no PDL)
    ("large_m_aligned", 512, 3072, 3072, True, 0, "w8a8"),  # TMA or Gluon GEMM on Hopper, pointer elsewhere
    ("large_m_odd_k", 300, 3073, 971, True, 0, "w8a8"),  # pointer GEMM (unaligned rows)
    ("w8a16_gemv", 2, 3072, 18432, True, 0, "w8a16"),  # GEMV
    ("w8a16_split_k", 16, 3072, 3072, False, 0, "w8a16"),  # split-K W8A16
    ("planned_few_rows", 8, 3072, 3072, True, 0, "planned"),  # eager plan: record, then two replays
    ("planned_tiled", 200, 3072, 3072, True, 0, "planned"),  # two-launch plan (quant + GEMM)
]

CONFIGS = {
    "default": {},
    "no_direct_launch": {"INT8_W8A8_NO_DIRECT_LAUNCH": "1"},
    "no_pdl": {"INT8_W8A8_NO_PDL": "1"},
    "no_gluon": {"INT8_W8A8_NO_GLUON": "1"},
    "no_tma": {"INT8_W8A8_NO_TMA": "1"},
    "sm_89": {"INT8_W8A8_ARCH": "sm_89"},
    "sm_80": {"INT8_W8A8_ARCH": "sm_80"},
    "sm_120": {"INT8_W8A8_ARCH": "sm_120"},
}

_PROBE = r'''
import json, sys
import torch
from comfy_int8_w8a8.int8 import Int8Config, Int8Weights, compat
from comfy_int8_w8a8.int8.backends import triton_dispatch
from comfy_int8_w8a8.int8.backends.registry import get_backend
from comfy_int8_w8a8.int8.kernels.triton_gemm import POINTER_CONFIGS_AMPERE, POINTER_CONFIGS_HOPPER
from comfy_int8_w8a8.int8.launch import fused_w8a8, gemm, gemm_choice, gemv, host, quant, splitk
from comfy_int8_w8a8.int8.launch.eager_plan import EagerPlan, planned_call

inputs_path, outputs_path = sys.argv[1], sys.argv[2]
cases = torch.load(inputs_path)
backend = get_backend("triton")
config = Int8Config(runtime_backend="triton", small_batch_fallback="never")
outputs, plans_built = {}, {}
for name, case in cases.items():
    x = case["x"].cuda()
    w = Int8Weights(case["weight"].cuda(), case["weight_scale"].cuda(),
                    case["bias"].cuda() if case["bias"] is not None else None, case["hadamard_group"])
    backend.prepare_device_state(w, config)
    path = case["path"]
    if path == "w8a8":
        ys = [triton_dispatch.w8a8_linear(x, w)]
    elif path == "w8a8_unfused":
        ys = [triton_dispatch.w8a8_linear(x, w, fused=False)]
    elif path == "w8a16":
        ys = [triton_dispatch.weight_only_linear(x, w)]
    else:  # planned: the first call records, later calls replay the plan where one was built
        plans, ys = {}, []
        for _ in range(3):
            y = planned_call(plans, x, backend.eager_plan, w, config)
            ys.append(y if y is not None else backend.linear(x, w, config))  # None: no plan, the normal path
        plans_built[name] = any(isinstance(p, EagerPlan) for p in plans.values())
    torch.cuda.synchronize()
    outputs[name] = [y.cpu() for y in ys]
torch.save(outputs, outputs_path)

def entries(launcher):
    return list(launcher._compiled.values())  # (compiled, direct entry or None, launched with PDL)

launchers = [quant._plain_launch, quant._rot_launch, quant._rot_row_launch, splitk._launch, fused_w8a8._launch,
             gemv._launch, gemm._tma_launch]
all_entries = [e for launcher in launchers for e in entries(launcher)]
a = torch.zeros(256, 256, dtype=torch.int8, device="cuda")
print(json.dumps({
    "capability": list(host.capability(torch.cuda.current_device())),
    "real_capability": list(torch.cuda.get_device_capability()),
    "supports_pdl": host.supports_pdl(torch.cuda.current_device()),
    "pdl_launches": sum(1 for e in entries(splitk._launch) if e[2]),
    "direct_entries": sum(1 for e in all_entries if e[1] is not None),
    "entries": len(all_entries),
    "hopper_tma_ok": gemm.hopper_tma_ok(a, a),
    "tma_tuned": len(gemm._tuned),
    "gluon_choices": sum(1 for c in gemm_choice._choices.values() if c is not None),
    "pointer_table": "hopper" if gemm._int8_gemm_kernel.configs == POINTER_CONFIGS_HOPPER else (
        "ampere" if gemm._int8_gemm_kernel.configs == POINTER_CONFIGS_AMPERE else "other"),
    "gate": {"host_tma": compat.host_tma(), "pdl": compat.pdl(), "gluon": compat.gluon(),
             "direct_launch": compat.direct_launch()},
    "plans_built": plans_built,
}))
'''


def _case_tensors(rows: int, k: int, n: int, bias: bool, group: int, path: str) -> dict:
    w = torch.randn(n, k, dtype=torch.float64) / k**0.5
    q, s = quantize_per_channel(w)
    x = torch.randn(rows, k) * 2
    x[:, ::97] *= 30  # outlier channels, as in diffusion transformers
    return {"x": x.bfloat16(), "weight": q, "weight_scale": s, "bias": torch.randn(n) if bias else None,
            "hadamard_group": group, "path": path}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[str, dict]:
    torch.manual_seed(0)
    cases = {name: _case_tensors(*spec) for name, *spec in CASES}
    path = tmp_path_factory.mktemp("fallbacks") / "inputs.pt"
    torch.save(cases, path)
    return str(path), cases


_runs: dict[str, tuple[dict, dict]] = {}


def _run(config: str, inputs: tuple[str, dict], tmp_path_factory) -> tuple[dict, dict]:
    """(facts, outputs) of the probe in a fresh process with ``config``'s environment (memoized per config)."""
    if config not in _runs:
        out = tmp_path_factory.mktemp(config) / "outputs.pt"
        env = {k: v for k, v in os.environ.items() if not k.startswith("INT8_W8A8_")}
        # tuned here, not read from (nor written to) the user's tuning cache
        env.update(CONFIGS[config], INT8_W8A8_TUNING_CACHE="off", PYTHONPATH=os.pathsep.join(sys.path))
        proc = subprocess.run([sys.executable, "-c", _PROBE, inputs[0], str(out)], capture_output=True, text=True,
                              env=env, timeout=1800)
        assert proc.returncode == 0, f"{config}: probe failed\n{proc.stderr[-4000:]}"
        facts = json.loads(proc.stdout.strip().splitlines()[-1])
        _runs[config] = facts, torch.load(out)
    return _runs[config]


def _reference(case: dict) -> torch.Tensor:
    x, bias = case["x"], case["bias"]
    if case["hadamard_group"]:
        x = rotate_activation(x, case["hadamard_group"])
    return int8_linear_reference(x, case["weight"], case["weight_scale"], bias), x


def _cast_step(ref: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    # as in test_triton_kernels.py: fp32 epilogue (a few roundings) then one cast to dtype
    b = bias.double().abs() if bias is not None else 0
    magnitude = (ref - (bias.double() if bias is not None else 0)).abs() + b
    return magnitude * 4 * torch.finfo(torch.float32).eps + ref.abs() * torch.finfo(dtype).eps + torch.finfo(dtype).tiny


def _check_against_reference(name: str, case: dict, y: torch.Tensor) -> None:
    from comfy_int8_w8a8.int8 import quantize_per_token

    dtype = case["x"].dtype
    assert y.dtype == dtype and y.shape == (case["x"].shape[0], case["weight"].shape[0]), name
    if case["path"] == "w8a16":  # fp32 accumulation of exact products, then the scale and the cast
        x, wq, ws = case["x"].double(), case["weight"].double(), case["weight_scale"].double().reshape(1, -1)
        ref = x @ wq.t() * ws + (case["bias"].double() if case["bias"] is not None else 0)
        k = x.shape[1]
        tol = (x.abs() @ wq.abs().t()) * ws * k * torch.finfo(torch.float32).eps + ref.abs() * torch.finfo(
            dtype).eps + torch.finfo(dtype).tiny
    else:
        ref, xr = _reference(case)
        tol = _cast_step(ref, case["bias"], dtype)
        if case["hadamard_group"]:  # one int8 step per output for the rotation's summation order
            _, xs = quantize_per_token(xr)
            flip = xs.double() * case["weight"].double().abs().amax(dim=1) * case["weight_scale"].double().reshape(
                1, -1)
            tol = tol + flip * (1 + torch.finfo(dtype).eps * 127)
    assert ((y.double() - ref).abs() <= tol).all(), f"{name}: max error {(y.double() - ref).abs().max():.3g}"


@pytest.mark.parametrize("config", list(CONFIGS))
def test_fallback_matches_reference(config, inputs, tmp_path_factory):
    _, outputs = _run(config, inputs, tmp_path_factory)
    for name, case in inputs[1].items():
        for y in outputs[name]:
            _check_against_reference(f"{config}/{name}", case, y)


@pytest.mark.parametrize("config", ["no_direct_launch", "no_pdl", "no_gluon"])
def test_launch_fallbacks_give_the_default_bits(config, inputs, tmp_path_factory):
    _, default = _run("default", inputs, tmp_path_factory)
    _, outputs = _run(config, inputs, tmp_path_factory)
    for name in default:
        for y, y_default in zip(outputs[name], default[name]):
            assert torch.equal(y, y_default), f"{config}/{name}"


def test_default_takes_the_fast_paths_on_hopper(inputs, tmp_path_factory):
    facts, _ = _run("default", inputs, tmp_path_factory)
    if facts["real_capability"][0] != 9:
        pytest.skip("the fast paths are Hopper's")
    assert facts["supports_pdl"] and facts["pdl_launches"] > 0  # the two-kernel few-rows case
    assert facts["hopper_tma_ok"] and (facts["tma_tuned"] > 0 or facts["gluon_choices"] > 0)
    assert facts["direct_entries"] > 0
    assert facts["plans_built"]["planned_few_rows"] and facts["plans_built"]["planned_tiled"]
    assert facts["pointer_table"] == "hopper"


def test_no_direct_launch_runs_every_kernel_through_compiled_run(inputs, tmp_path_factory):
    facts, _ = _run("no_direct_launch", inputs, tmp_path_factory)
    assert not facts["gate"]["direct_launch"]
    assert facts["entries"] > 0 and facts["direct_entries"] == 0
    # the two-launch plan needs the direct entries (replayers); the one-launch plan replays through compiled.run
    assert not facts["plans_built"]["planned_tiled"]


def test_no_pdl_launches_nothing_with_pdl(inputs, tmp_path_factory):
    facts, _ = _run("no_pdl", inputs, tmp_path_factory)
    assert not facts["gate"]["pdl"] and not facts["supports_pdl"] and facts["pdl_launches"] == 0


def test_no_gluon_runs_the_tma_kernel(inputs, tmp_path_factory):
    facts, _ = _run("no_gluon", inputs, tmp_path_factory)
    assert not facts["gate"]["gluon"] and facts["gluon_choices"] == 0
    if facts["real_capability"][0] == 9:
        assert facts["tma_tuned"] > 0  # the large aligned case went through the TMA kernel's autotuner


def test_no_tma_runs_the_pointer_kernel(inputs, tmp_path_factory):
    facts, _ = _run("no_tma", inputs, tmp_path_factory)
    assert not facts["gate"]["host_tma"] and not facts["hopper_tma_ok"]
    assert facts["tma_tuned"] == 0 and facts["gluon_choices"] == 0


@pytest.mark.parametrize("config,capability", [("sm_89", [8, 9]), ("sm_80", [8, 0])])
def test_forced_ampere_and_ada_paths(config, capability, inputs, tmp_path_factory):
    facts, _ = _run(config, inputs, tmp_path_factory)
    assert facts["capability"] == capability
    assert not facts["supports_pdl"] and facts["pdl_launches"] == 0
    assert not facts["hopper_tma_ok"] and facts["tma_tuned"] == 0 and facts["gluon_choices"] == 0
    assert facts["pointer_table"] == "ampere"


def test_forced_blackwell_never_runs_hopper_kernels(inputs, tmp_path_factory):
    facts, _ = _run("sm_120", inputs, tmp_path_factory)
    assert facts["capability"] == [12, 0]
    assert not facts["hopper_tma_ok"] and facts["tma_tuned"] == 0 and facts["gluon_choices"] == 0
