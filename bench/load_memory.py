"""Weight memory of a Flux-dev-sized model loaded through the INT8 loader node's code path, against a bf16 load.

Run on a CUDA machine with ComfyUI importable (``PYTHONPATH=/path/to/ComfyUI``)::

    python -m comfy_int8_w8a8.bench.load_memory --out load_memory.json

It builds the state dict of ComfyUI's own Flux class at Flux-dev size (19 double + 38 single blocks, hidden 3072,
11.9 B parameters) with random bf16 weights, generated on the GPU one tensor at a time and kept in CPU memory, then
loads it (1) with ComfyUI's stock path in bf16 and (2) with the loader node's path (quantized at load on the GPU),
moves each model fully onto the GPU with ComfyUI's model management and records the weight bytes (parameters and
buffers, int8 data + scales for quantized layers) and ``torch.cuda.memory_allocated`` growth. Prints and writes JSON.
Acceptance: ours <= 0.55x the bf16 weight memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time

import torch

FLUX_DEV = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56],
                theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True, txt_ids_dims=[])


def build_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random bf16 Flux-dev weights: shapes from ComfyUI's Flux class (built on the meta device)."""
    import comfy.ldm.flux.model
    import comfy.ops

    with torch.device("meta"):
        model = comfy.ldm.flux.model.Flux(**FLUX_DEV, operations=comfy.ops.disable_weight_init, dtype=torch.bfloat16)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    sd = {}
    for name, t in model.state_dict().items():
        fan_in = t[0].numel() if t.dim() >= 2 else 1
        w = torch.randn(t.shape, generator=gen, device="cuda", dtype=torch.float32) / fan_in ** 0.5
        sd[name] = w.to(torch.bfloat16).cpu()
    return sd


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer; a QuantizedTensor counts its int8 data and its scales."""
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        inner = getattr(t, "_qdata", None)
        if inner is not None:
            total += inner.numel() * inner.element_size()
            params = t._params
            for field in params._tensor_fields():
                value = getattr(params, field)
                total += value.numel() * value.element_size()
        else:
            total += t.numel() * t.element_size()
    return total


def measure(load, label: str) -> dict:  # noqa: ANN001
    import comfy.model_management as mm

    mm.unload_all_models()
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    patcher = load()
    mm.load_models_gpu([patcher], force_full_load=True)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    result = {"label": label, "weight_bytes": weight_bytes(patcher.model.diffusion_model),
              "allocated_bytes": torch.cuda.memory_allocated() - before, "load_s": round(elapsed, 2)}
    mm.unload_all_models()
    del patcher
    gc.collect()
    torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="load_memory.json")
    parser.add_argument("--outlier-method", default="hadamard")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("load_memory: needs a CUDA GPU", file=sys.stderr)
        return 2
    import comfy.sd

    from ..nodes.loader_node import LoaderOptions, load_state_dict_as_int8

    sd = build_state_dict()
    params = sum(t.numel() for t in sd.values())
    bf16 = measure(lambda: comfy.sd.load_diffusion_model_state_dict(dict(sd), model_options={"dtype": torch.bfloat16}),
                   "bf16 (stock)")
    options = LoaderOptions(outlier_method=args.outlier_method)
    ours = measure(lambda: load_state_dict_as_int8(dict(sd), {}, options, source="<random Flux-dev>"),
                   f"int8 W8A8 ({args.outlier_method})")
    report = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "parameters": params,
        "bf16": bf16, "int8": ours,
        "weight_ratio": ours["weight_bytes"] / bf16["weight_bytes"],
        "allocated_ratio": ours["allocated_bytes"] / bf16["allocated_bytes"],
    }
    report["pass_0_55"] = report["weight_ratio"] <= 0.55 and report["allocated_ratio"] <= 0.55
    print(json.dumps(report, indent=1))
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    return 0 if report["pass_0_55"] else 1


if __name__ == "__main__":
    sys.exit(main())
