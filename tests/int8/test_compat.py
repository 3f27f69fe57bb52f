"""The Triton/GPU feature gate (int8/compat/) on the CPU: faked Triton versions and GPU capabilities route to the
right backend and kernels, each environment switch turns its feature off and says so once. Runs without a GPU;
the tests that need the launch modules (which import Triton) skip without Triton."""

import importlib.util
import logging
import types

import pytest
import torch

from comfy_int8_w8a8.int8 import compat, resolve_backend
from comfy_int8_w8a8.int8.compat import launcher as launcher_layout
from comfy_int8_w8a8.int8.log_once import clear_log_once

HAS_TRITON = importlib.util.find_spec("triton") is not None
SWITCHES = (compat.NO_GLUON, compat.NO_TMA, compat.NO_PDL, compat.NO_DIRECT_LAUNCH, compat.NO_EAGER_PLANS, compat.ARCH)


@pytest.fixture(autouse=True)
def fresh_gate(monkeypatch):
    """Every test starts from an unset environment and forgets what the gate (and launch/host) detected."""
    for name in SWITCHES:
        monkeypatch.delenv(name, raising=False)

    def reset() -> None:
        compat.reset()
        clear_log_once()
        if HAS_TRITON or "comfy_int8_w8a8.int8.launch.host" in __import__("sys").modules:
            from comfy_int8_w8a8.int8.launch import host

            host.capability.cache_clear()

    reset()
    yield reset
    monkeypatch.undo()
    reset()


def _fake_gpu(monkeypatch, capability: tuple[int, int], triton: str | None = "3.6.0") -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(compat, "_installed_triton", lambda: triton)


@pytest.mark.parametrize("capability", [(8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)])
def test_triton_unavailable_reason_sm80_and_newer_with_current_triton_is_none(monkeypatch, capability):
    _fake_gpu(monkeypatch, capability)
    assert compat.triton_unavailable_reason(torch.device("cuda")) is None


def test_triton_unavailable_reason_names_each_missing_piece(monkeypatch):
    assert "CUDA GPUs only" in compat.triton_unavailable_reason(torch.device("cpu"))
    _fake_gpu(monkeypatch, (7, 0))
    assert "sm_70" in compat.triton_unavailable_reason(torch.device("cuda"))
    _fake_gpu(monkeypatch, (9, 0), triton=None)
    assert "pip install triton" in compat.triton_unavailable_reason(torch.device("cuda"))
    _fake_gpu(monkeypatch, (9, 0), triton="3.1.0")
    reason = compat.triton_unavailable_reason(torch.device("cuda"))
    assert "3.1.0" in reason and "3.2" in reason


def test_turing_takes_torch_int_mm_with_one_warning_naming_the_gpu(monkeypatch, caplog):
    _fake_gpu(monkeypatch, (7, 5))
    assert "sm_75" in compat.triton_unavailable_reason(torch.device("cuda"))
    with caplog.at_level(logging.INFO, logger="comfy_int8_w8a8"):
        assert resolve_backend("auto", "cuda").name == "torch_int_mm"
        assert resolve_backend("auto", "cuda").name == "torch_int_mm"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "sm_75" in r.message]
    assert len(warnings) == 1 and "torch_int_mm" in warnings[0].message


@pytest.mark.parametrize("capability", [(10, 0), (12, 0)])
def test_blackwell_with_a_triton_that_cannot_compile_for_it_takes_torch_int_mm(monkeypatch, capability):
    _fake_gpu(monkeypatch, capability, triton="3.2.0")
    assert "Blackwell needs Triton 3.3" in compat.triton_unavailable_reason(torch.device("cuda"))
    assert resolve_backend("auto", "cuda").name == "torch_int_mm"
    _fake_gpu(monkeypatch, capability, triton="3.3.1")
    assert compat.triton_unavailable_reason(torch.device("cuda")) is None


def test_triton_version_parses_dev_and_local_builds(monkeypatch):
    monkeypatch.setattr(compat, "_installed_triton", lambda: "3.4.0+git1234abcd")
    assert compat.triton_version() == (3, 4)
    monkeypatch.setattr(compat, "_installed_triton", lambda: None)
    assert compat.triton_version() is None


@pytest.mark.parametrize("triton", [None, "3.1.0"])
def test_auto_takes_torch_int_mm_without_a_usable_triton_and_says_why_once(monkeypatch, caplog, triton):
    _fake_gpu(monkeypatch, (9, 0), triton=triton)
    with caplog.at_level(logging.INFO, logger="comfy_int8_w8a8"):
        assert resolve_backend("auto", "cuda").name == "torch_int_mm"
        assert resolve_backend("auto", "cuda").name == "torch_int_mm"
    why = [r for r in caplog.records if "passed over triton" in r.message]
    assert len(why) == 1
    assert ("pip install triton" if triton is None else "older than") in why[0].message


def test_auto_takes_triton_with_a_current_triton(monkeypatch):
    _fake_gpu(monkeypatch, (8, 9))
    assert resolve_backend("auto", "cuda").name == "triton"


@pytest.mark.parametrize("text,expect", [("sm_80", (8, 0)), ("sm_86", (8, 6)), ("sm_89", (8, 9)), ("sm_90", (9, 0)),
                                         ("sm_90a", (9, 0)), ("sm_100", (10, 0)), ("sm_120", (12, 0)),
                                         ("SM_75", (7, 5))])
def test_arch_override_parses_cuda_arch_names(monkeypatch, text, expect):
    monkeypatch.setenv(compat.ARCH, text)
    assert compat.arch_override() == expect
    assert compat.capability(0) == expect  # no GPU asked: the override answers


def test_arch_override_rejects_a_name_that_is_not_an_arch(monkeypatch):
    monkeypatch.setenv(compat.ARCH, "hopper")
    with pytest.raises(ValueError, match="INT8_W8A8_ARCH"):
        compat.capability(0)


def test_arch_override_decides_int8_availability(monkeypatch):
    _fake_gpu(monkeypatch, (9, 0))
    monkeypatch.setenv(compat.ARCH, "sm_70")
    assert "sm_70" in compat.triton_unavailable_reason(torch.device("cuda"))


@pytest.mark.parametrize("switch,probe,message", [
    (compat.NO_TMA, compat.host_tma, "TMA GEMM off (INT8_W8A8_NO_TMA is set)"),
    (compat.NO_PDL, compat.pdl, "programmatic dependent launch off (INT8_W8A8_NO_PDL is set)"),
    (compat.NO_GLUON, compat.gluon, "Gluon GEMM off (INT8_W8A8_NO_GLUON is set)"),
    (compat.NO_DIRECT_LAUNCH, compat.direct_launch, "direct kernel launch off (INT8_W8A8_NO_DIRECT_LAUNCH is set)"),
    (compat.NO_EAGER_PLANS, compat.eager_plans, "eager launch plans off (INT8_W8A8_NO_EAGER_PLANS is set)"),
])
def test_env_switch_turns_its_feature_off_and_logs_once(monkeypatch, caplog, fresh_gate, switch, probe, message):
    monkeypatch.setenv(switch, "1")
    fresh_gate()
    with caplog.at_level(logging.INFO, logger="comfy_int8_w8a8"):
        assert probe() is False
        assert probe() is False
        fresh_gate()  # detected again and log_once cleared: the line comes a second time, no more
        assert probe() is False
    assert len([r for r in caplog.records if message in r.message]) == 2


@pytest.mark.parametrize("value", ["", "0"])
def test_env_switch_empty_or_zero_leaves_the_feature_on(monkeypatch, value):
    monkeypatch.setenv(compat.NO_DIRECT_LAUNCH, value)
    assert compat.direct_launch() is True


def test_direct_launch_switch_sends_every_kernel_through_compiled_run(monkeypatch, fresh_gate):
    runner = types.SimpleNamespace(global_scratch_size=0, profile_scratch_size=0, launch_cooperative_grid=False,
                                   launch_pdl=False, launch=lambda *a: None)
    compiled = types.SimpleNamespace(run=runner)
    assert launcher_layout.direct_launch_entry(compiled) is runner.launch
    monkeypatch.setenv(compat.NO_DIRECT_LAUNCH, "1")
    fresh_gate()
    assert launcher_layout.direct_launch_entry(compiled) is None


@pytest.mark.parametrize("version", ["3.2.0", "3.3.1"])
def test_triton_before_3_4_has_no_host_tma_and_says_why(monkeypatch, caplog, version):
    monkeypatch.setattr(compat, "_installed_triton", lambda: version)
    with caplog.at_level(logging.INFO, logger="comfy_int8_w8a8"):
        assert compat.host_tma() is False
    assert any("no host tensor descriptors" in r.message for r in caplog.records)


@pytest.mark.parametrize("version", ["3.5.0", "3.7.0", None])
def test_gluon_only_on_the_tested_triton(monkeypatch, caplog, version):
    monkeypatch.setattr(compat, "_installed_triton", lambda: version)
    with caplog.at_level(logging.INFO, logger="comfy_int8_w8a8"):
        assert compat.gluon() is False
    assert any("Gluon GEMM off" in r.message and "tested on" in r.message for r in caplog.records)


def test_no_triton_means_no_pdl_and_no_tma(monkeypatch):
    monkeypatch.setattr(compat, "_installed_triton", lambda: None)
    monkeypatch.setattr(compat, "_gdc_reason", lambda: "no triton")
    assert compat.pdl() is False
    assert compat.host_tma() is False


def test_importing_the_engine_does_not_import_triton():
    import subprocess
    import sys

    code = ("import sys, comfy_int8_w8a8.int8, comfy_int8_w8a8.int8.compat, comfy_int8_w8a8.int8.backends.registry;"
            "import comfy_int8_w8a8.int8.backends.custom_ops; print('triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "PYTHONPATH": __import__("os").pathsep.join(sys.path)})
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------- routing (launch modules)
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="the launch modules import Triton")


@needs_triton
@pytest.mark.parametrize("arch,pdl", [("sm_80", False), ("sm_89", False), ("sm_90", True), ("sm_100", True),
                                      ("sm_120", True)])
def test_host_pdl_follows_the_arch_and_the_switch(monkeypatch, fresh_gate, arch, pdl):
    from comfy_int8_w8a8.int8.launch import host

    monkeypatch.setenv(compat.ARCH, arch)
    fresh_gate()
    assert host.supports_pdl(0) is (pdl and compat.pdl())
    monkeypatch.setenv(compat.NO_PDL, "1")
    fresh_gate()
    assert host.supports_pdl(0) is False


def _operands() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.zeros(64, 256, dtype=torch.int8), torch.zeros(128, 256, dtype=torch.int8), torch.zeros(64, 128)


@needs_triton
@pytest.mark.parametrize("arch,tma", [("sm_80", False), ("sm_89", False), ("sm_90", True), ("sm_100", False),
                                      ("sm_120", False)])
def test_hopper_tma_kernel_only_on_sm90_exactly(monkeypatch, fresh_gate, arch, tma):
    from comfy_int8_w8a8.int8.launch import gemm

    monkeypatch.setenv(compat.ARCH, arch)
    monkeypatch.setattr(gemm, "device_index", lambda device: 0)
    fresh_gate()
    a, b, _ = _operands()
    assert gemm.hopper_tma_ok(a, b) is (tma and compat.host_tma())
    monkeypatch.setenv(compat.NO_TMA, "1")
    fresh_gate()
    assert gemm.hopper_tma_ok(a, b) is False


@needs_triton
@pytest.mark.parametrize("arch", ["sm_80", "sm_89", "sm_90", "sm_100", "sm_120"])
def test_gluon_kernel_only_on_sm90_exactly(monkeypatch, fresh_gate, arch):
    if compat.gluon_api() is None:
        pytest.skip("this Triton has no Gluon")
    from comfy_int8_w8a8.int8.launch import gluon_gemm

    monkeypatch.setenv(compat.ARCH, arch)
    monkeypatch.setattr(gluon_gemm, "device_index", lambda device: 0)
    fresh_gate()
    a, _, c = _operands()
    c = c.bfloat16()
    assert gluon_gemm.supported(a, c) is (arch == "sm_90" and compat.gluon())
    monkeypatch.setenv(compat.NO_GLUON, "1")
    fresh_gate()
    assert gluon_gemm.supported(a, c) is False


@needs_triton
def test_gdc_stand_ins_are_jit_functions_when_triton_lacks_them(monkeypatch):
    import triton

    monkeypatch.setattr(compat, "_gdc_reason", lambda: "no gdc in this Triton")
    wait, trigger = compat.gdc_functions()
    assert isinstance(wait, triton.runtime.JITFunction) and isinstance(trigger, triton.runtime.JITFunction)
    assert compat.pdl() is False


def test_eager_plans_switch_keeps_every_eager_call_on_the_normal_path(monkeypatch, fresh_gate):
    from comfy_int8_w8a8.int8 import Int8Config, Int8Linear
    from comfy_int8_w8a8.int8.backends.reference import ReferenceBackend

    recorded = []
    monkeypatch.setattr(ReferenceBackend, "plan_rows", lambda self, config: 8)
    monkeypatch.setattr(ReferenceBackend, "eager_plan",
                        lambda self, x, w, config: recorded.append(1) or (None, self.linear(x, w, config)))
    x = torch.randn(4, 64)
    on = Int8Linear.from_linear(torch.nn.Linear(64, 32), Int8Config(runtime_backend="reference"))
    on(x)
    assert recorded == [1]  # with plans on, the first eager call records
    monkeypatch.setenv(compat.NO_EAGER_PLANS, "1")
    fresh_gate()
    off = Int8Linear.from_linear(torch.nn.Linear(64, 32), Int8Config(runtime_backend="reference"))
    y = off(x)
    assert recorded == [1] and off._runtime.replays == {}
    assert torch.equal(y, off.backend_for(x.device).linear(x, off.int8_weights(), off.config))


@needs_triton
def test_gdc_with_another_builder_keyword_than_the_compiler_passes_is_off(monkeypatch):
    """Triton 3.4.0: gdc_wait(_builder=None) while its compiler passes _semantic (the kernels would not compile)."""
    from triton.language.extra import cuda

    def gdc_wait(_builder=None):  # noqa: ANN202 - 3.4.0's signature
        pass

    monkeypatch.setattr(cuda, "gdc_wait", gdc_wait, raising=False)
    monkeypatch.setattr(cuda, "gdc_launch_dependents", gdc_wait, raising=False)
    monkeypatch.setattr("triton.language.program_id", lambda axis, _semantic=None: 0)
    compat.reset()
    assert "do not compile" in compat._gdc_reason()
    assert compat.pdl() is False


@pytest.mark.parametrize("capability,triton,fp8", [((8, 6), "3.6.0", False), ((8, 9), "3.3.1", True),
                                                   ((12, 0), "3.4.0", False), ((12, 0), "3.5.1", True),
                                                   ((10, 0), "3.3.1", True)])
def test_fp8_attention_only_where_triton_has_an_fp8_mma(monkeypatch, capability, triton, fp8):
    _fake_gpu(monkeypatch, capability, triton=triton)
    monkeypatch.setattr(compat, "_triton_fp8_reason", lambda: None)
    reason = compat.fp8_attention_unavailable_reason(torch.device("cuda"))
    assert (reason is None) == fp8, reason
