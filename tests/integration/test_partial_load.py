"""Partial loading, as ComfyUI does on a 12-16 GB card, against the real ComfyUI on the CPU: a tiny Flux-dev from
the loader node's own function, loaded with a weight budget of a third of the model (ComfyUI's lowvram path: the
layers past the budget stay on the offload device and ComfyUI casts them, and applies their LoRA patches, per
call), must give the fully loaded model's prediction, with every streamed int8 layer computed by the int8 runtime
(no silent 16-bit fallback), without and with a LoRA.

On the CPU ComfyUI never loads partially by itself (the CPU has no VRAM budget), so the test hands its loader the
budget a small GPU would get: ``LoadedModel.model_load`` is called with ``lowvram_model_memory`` set, which is what
``load_models_gpu`` passes on a GPU short of memory.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.integration

BUDGET_SHARE = 1 / 3
# Per-call requantization of a streamed patched layer (Hadamard fold in float32) vs once at load (float64): int8
# values may differ by a step at rounding ties; measured on the CPU when written: cosine 0.9999999997.
COSINE_LORA_MIN = 0.9999


@pytest.fixture(scope="module")
def files(comfy_cpu, tmp_path_factory):
    from comfy_int8_w8a8.bench import family_models as fm
    from comfy_int8_w8a8.bench.family_table import FAMILIES

    folder = tmp_path_factory.mktemp("partial")
    model = fm.build_model(FAMILIES["flux1_dev"], tiny=True, device="cpu")
    paths = {"bf16": folder / "flux_bf16.safetensors", "lora": folder / "flux_lora.safetensors"}
    fm.save_bf16(model, paths["bf16"])
    fm.save_lora(model, paths["lora"], rank=8)
    return paths


def _predict(path, lora_path, budget_share: float | None, monkeypatch) -> tuple[torch.Tensor, dict]:  # noqa: ANN001
    """The model prediction at sigma 0.5, and counts: int8 layers that ran streamed, and runtime calls for them."""
    import comfy.model_management as mm
    import comfy.sd
    import comfy.utils

    from comfy_int8_w8a8.bench import family_models as fm
    from comfy_int8_w8a8.bench import family_sampling as fs
    from comfy_int8_w8a8.bench.family_table import FAMILIES
    from comfy_int8_w8a8.int8.layer import Int8LayerRuntime
    from comfy_int8_w8a8.nodes.loader_node import LoaderOptions, load_int8_diffusion_model

    mm.unload_all_models()
    patcher = load_int8_diffusion_model(str(path), LoaderOptions())
    if lora_path is not None:
        patcher, _ = comfy.sd.load_lora_for_models(patcher, None, comfy.utils.load_torch_file(str(lora_path)), 1.0, 0)
    counts = {"streamed_forwards": 0, "runtime_uncached": 0}
    if budget_share is not None:
        budget = int(patcher.model_size() * budget_share)
        load = mm.LoadedModel.model_load
        monkeypatch.setattr(mm.LoadedModel, "model_load",
                            lambda self, lowvram_model_memory=0, force_patch_weights=False:
                            load(self, budget, force_patch_weights=force_patch_weights))
    call = Int8LayerRuntime.__call__

    def counted(self, x, weight, scale, bias, hadamard_group, smooth, cache=True):  # noqa: ANN001, ANN202
        counts["runtime_uncached"] += not cache
        return call(self, x, weight, scale, bias, hadamard_group, smooth, cache)

    monkeypatch.setattr(Int8LayerRuntime, "__call__", counted)
    int8_layers = [m for m in patcher.model.modules() if getattr(m, "is_int8", False)]
    assert int8_layers

    def hook(module, args):  # noqa: ANN001, ANN202
        counts["streamed_forwards"] += bool(module.comfy_cast_weights)

    handles = [m.register_forward_pre_hook(hook) for m in int8_layers]
    try:
        family = FAMILIES["flux1_dev"]
        noise = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(1))
        prediction = fs.model_output(patcher, noise, fm.conditioning(family, True, seed=2))
    finally:
        for h in handles:
            h.remove()
        monkeypatch.undo()
        mm.unload_all_models()
    return prediction, counts


@pytest.mark.parametrize("with_lora", [False, True], ids=["plain", "lora"])
def test_partially_loaded_int8_model_streams_its_layers_and_matches_the_full_load(files, with_lora, monkeypatch):
    from comfy_int8_w8a8.bench.family_sampling import cosine

    lora = files["lora"] if with_lora else None
    full, full_counts = _predict(files["bf16"], lora, None, monkeypatch)
    partial, counts = _predict(files["bf16"], lora, BUDGET_SHARE, monkeypatch)
    assert full_counts["streamed_forwards"] == 0
    assert counts["streamed_forwards"] > 0  # the budget really left layers off the device
    # every streamed int8 layer's call went through the int8 runtime (the 16-bit fallback never calls it)
    assert counts["runtime_uncached"] == counts["streamed_forwards"]
    if with_lora:  # the full load requantized each patched weight once (float64 fold), the streamed ones per call
        assert cosine(partial, full) >= COSINE_LORA_MIN, cosine(partial, full)
    else:
        assert torch.equal(partial, full)
