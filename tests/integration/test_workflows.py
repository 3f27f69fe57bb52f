"""The example workflows' API twins, run end to end through POST /prompt on tiny Flux and Wan checkpoints.

The twins need text encoders and a VAE; for the tests those are stubbed out (the harness's ``Int8TestConditioning``
emits a fixed random conditioning of the model's context width, ``SaveLatent`` replaces decoding), the sizes shrunk and the steps cut to 2. The model path
(loader -> [LoRA] -> [compile] -> sampler) is the twin's own.

Tolerance. A W8A8 layer rounds its weight (per output channel) and its input (per token) to 8 bits with an absmax
scale. The weight rounding alone is measured exactly: the "fake-quant" file holds each int8 layer's dequantized
weight in fp32, run through the stock loader (relative latent error ``e_w``). The activation rounding has the same
8-bit absmax step, its size relative to the weight's set by the ratio of crest factors (absmax / rms) of tokens
and weight rows; allowing tokens a crest factor up to 4x the rows' gives ``e <= e_w * sqrt(rounds + 4**2)``, with
``rounds`` the weight roundings (1; 2 after a LoRA is baked into the int8 weight and requantized).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration

WORKFLOWS = Path(__file__).resolve().parents[2] / "example_workflows"
_STUBBED = {"DualCLIPLoader", "CLIPLoader", "CLIPTextEncode", "FluxGuidance", "VAELoader", "VAEDecode", "SaveImage",
            "SaveAnimatedWEBP"}
CREST_RATIO = 4.0
_counter = iter(range(10**6))


def tiny_variant(family: str, unet: str, *, stock_loader: bool = False, compile_model: bool = False,
                 lora: tuple[str, float] | None = None, loader_widgets: dict | None = None) -> tuple[dict, str]:
    """The family's API twin, made runnable on the tiny checkpoints. Returns ``(prompt, SaveLatent node id)``."""
    name = {"flux": "flux_int8_text_to_image_api.json", "wan": "wan_int8_text_to_video_api.json"}[family]
    api = json.loads((WORKFLOWS / name).read_text())
    graph = copy.deepcopy(api)
    removed = {nid for nid, node in graph.items() if node["class_type"] in _STUBBED}
    sampler = next(nid for nid, node in graph.items() if node["class_type"] == "KSampler")
    loader = next(nid for nid, node in graph.items() if node["class_type"] == "OTUNetLoaderW8A8")
    compiler = next(nid for nid, node in graph.items() if node["class_type"] == "INT8LazyTorchCompile")
    for nid in removed:
        del graph[nid]
    width = {"flux": 1024, "wan": 4096}[family]
    graph["cond"] = {"class_type": "Int8TestConditioning", "inputs": {"width": width, "tokens": 8, "seed": 0}}
    graph["save"] = {"class_type": "SaveLatent",
                     "inputs": {"samples": [sampler, 0], "filename_prefix": f"{family}_{next(_counter)}"}}
    for node in graph.values():
        for key, value in node["inputs"].items():
            if isinstance(value, list) and value[0] in removed:
                node["inputs"][key] = ["cond", 0]
        if node["class_type"] == "EmptySD3LatentImage":
            node["inputs"].update(width=64, height=64)
        if node["class_type"] == "EmptyHunyuanLatentVideo":
            node["inputs"].update(width=64, height=64, length=5)
    graph[sampler]["inputs"]["steps"] = 2
    graph[loader]["inputs"].update(unet_name=unet, **(loader_widgets or {}))
    if stock_loader:
        graph[loader] = {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}}
    if not compile_model:  # bypass: its consumers take its input
        source = graph.pop(compiler)["inputs"]["model"]
        _rewire(graph, compiler, source)
    if lora is not None:
        graph["lora"] = {"class_type": "LoraLoaderModelOnly",
                         "inputs": {"model": [loader, 0], "lora_name": lora[0], "strength_model": lora[1]}}
        _rewire(graph, loader, ["lora", 0], skip="lora")
    return graph, "save"


def _rewire(graph: dict, old: str, new: list, skip: str | None = None) -> None:
    for nid, node in graph.items():
        if nid == skip:
            continue
        for key, value in node["inputs"].items():
            if isinstance(value, list) and value[0] == old:
                node["inputs"][key] = list(new)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def bound(e_w: float, rounds: int = 1) -> float:
    return e_w * math.sqrt(rounds + CREST_RATIO**2)


def run_latent(comfy, family: str, unet: str, **kw: object) -> torch.Tensor:
    prompt, save = tiny_variant(family, unet, **kw)
    latent = comfy.latent(comfy.run(prompt), save)
    assert torch.isfinite(latent).all()
    return latent


@pytest.mark.parametrize("family", ["flux", "wan"])
def test_workflow_int8_close_to_16bit_on_the_fly_and_prequantized(comfy, family: str) -> None:
    files = comfy.files[family]
    ref = run_latent(comfy, family, files["bf16"], stock_loader=True)
    fake = run_latent(comfy, family, files["fakequant"], stock_loader=True)
    on_the_fly = run_latent(comfy, family, files["bf16"])
    prequantized = run_latent(comfy, family, files["int8"])
    e_w, e = rel_err(fake, ref), rel_err(on_the_fly, ref)
    assert 0 < e_w and 0 < e <= bound(e_w), (e, e_w)
    # The same int8 weights and kernels: the pre-quantized file loads without requantizing, to the same result.
    assert torch.equal(prequantized, on_the_fly)
    # Off: a 16-bit file stays 16-bit (and then matches the stock loader exactly).
    off = run_latent(comfy, family, files["bf16"], loader_widgets={"on_the_fly_quantization": False})
    assert torch.equal(off, ref)


@pytest.mark.parametrize("family", ["flux", "wan"])
def test_workflow_lora_matches_16bit_lora_and_reapplies_without_reload(comfy, family: str) -> None:
    files = comfy.files[family]
    strengths = (1.0, 0.5)
    refs = {s: run_latent(comfy, family, files["bf16"], stock_loader=True, lora=(files["lora"], s)) for s in strengths}
    fakes = {s: run_latent(comfy, family, files["fakequant"], stock_loader=True, lora=(files["lora"], s))
             for s in strengths}
    base = run_latent(comfy, family, files["bf16"])
    ours = {}
    for strength in strengths:  # back to back: the second run only changes the LoRA strength
        prompt, save = tiny_variant(family, files["bf16"], lora=(files["lora"], strength))
        entry = comfy.run(prompt)
        ours[strength] = comfy.latent(entry, save)
        loader = next(n for n, node in prompt.items() if node["class_type"] == "OTUNetLoaderW8A8")
        assert loader in comfy.cached_nodes(entry), "the checkpoint was read and loaded again for a LoRA change"
    for strength in strengths:
        e_w, e = rel_err(fakes[strength], refs[strength]), rel_err(ours[strength], refs[strength])
        assert e <= bound(e_w, rounds=2), (strength, e, e_w)
        # The LoRA visibly changes the output, so the comparison above is about the LoRA.
        assert rel_err(base, refs[strength]) > 3 * e
    assert not torch.equal(ours[1.0], ours[0.5])
    # Back without the LoRA: the patched weights were restored in place, bit for bit.
    assert torch.equal(run_latent(comfy, family, files["bf16"]), base)


COMPILE_FAILED = "INT8 Lazy Torch Compile: compile failed"  # the node's fallback warning (falls back to eager)


@pytest.mark.parametrize("family", ["flux", "wan"])
def test_workflow_with_lazy_compile_matches_eager_without_fallback(comfy, family: str) -> None:
    files = comfy.files[family]
    eager = run_latent(comfy, family, files["bf16"])
    ref = run_latent(comfy, family, files["bf16"], stock_loader=True)
    fake = run_latent(comfy, family, files["fakequant"], stock_loader=True)
    log_start = comfy.log.stat().st_size
    compiled = run_latent(comfy, family, files["bf16"], compile_model=True)
    # Every module the node compiles (blocks, and the embedders and final layer around them) compiled: a failure
    # would log the fallback warning and give the eager result, which the comparisons below cannot tell apart.
    with open(comfy.log, "rb") as log:
        log.seek(log_start)
        run_log = log.read().decode(errors="replace")
    assert "Prompt executed in" in run_log  # the server's log of this run (ComfyUI's main.py) was read
    assert COMPILE_FAILED not in run_log
    # Fused (compiled) activation quantization may round a few ties the other way: single int8 values move by one
    # step, so compiled and eager may differ by part of one rounding's error, never by more than a whole one.
    assert rel_err(compiled, eager) <= rel_err(fake, ref)
    assert rel_err(compiled, ref) <= bound(rel_err(fake, ref))


def test_ui_workflows_match_their_api_twins(comfy) -> None:
    info = comfy.get("/object_info")
    for ui_name in ("flux_int8_text_to_image.json", "wan_int8_text_to_video.json"):
        ui = json.loads((WORKFLOWS / ui_name).read_text())
        api = json.loads((WORKFLOWS / ui_name.replace(".json", "_api.json")).read_text())
        assert {str(n["id"]): n["type"] for n in ui["nodes"]} == {k: v["class_type"] for k, v in api.items()}
        links = {link[0]: link for link in ui["links"]}
        for node in ui["nodes"]:
            assert node["type"] in info, node["type"]
            for slot, inp in enumerate(node["inputs"]):
                src, src_slot = links[inp["link"]][1], links[inp["link"]][2]
                assert links[inp["link"]][3:5] == [node["id"], slot]
                assert api[str(node["id"])]["inputs"][inp["name"]] == [str(src), src_slot]
        assert {n["type"] for n in ui["nodes"]} >= {"OTUNetLoaderW8A8", "INT8LazyTorchCompile", "KSampler"}
