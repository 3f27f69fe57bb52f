"""The "INT8 Attention" node: clone the model and install the int8 attention as ComfyUI's attention override.

Off unless the node is in the graph. V1 node style (``INPUT_TYPES`` classmethod) so it registers on any host; it
needs no ComfyUI import: the MODEL is a ModelPatcher, whose ``clone()`` copies ``model_options``.
"""

from __future__ import annotations

from ..int8.backends.attention import PV_CHOICES, AttentionOptions
from .attention_override import Int8AttentionOverride

OVERRIDE_KEY = "optimized_attention_override"  # comfy/ldm/modules/attention.py wrap_attn


def patch_attention(model: object, options: AttentionOptions) -> object:
    """A clone of the ModelPatcher ``model`` whose attention calls go through :class:`Int8AttentionOverride`.
    An override installed before (another node's) keeps the calls ours does not take; a previous INT8 Attention
    is replaced, not stacked."""
    patched = model.clone()
    transformer_options = dict(patched.model_options.get("transformer_options", {}))
    previous = transformer_options.get(OVERRIDE_KEY)
    if isinstance(previous, Int8AttentionOverride):
        previous = previous.previous
    transformer_options[OVERRIDE_KEY] = Int8AttentionOverride(options, previous)
    patched.model_options["transformer_options"] = transformer_options
    return patched


class INT8Attention:
    """Run the model's attention with int8 Q.K^T (and fp8 P.V where the GPU has it) in a Triton kernel."""

    CATEGORY = "advanced/int8"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    DESCRIPTION = ("Attention with int8 Q.K^T (K mean-smoothed) and fp8 or 16-bit P.V in a Triton kernel, on NVIDIA "
                   "GPUs (sm_80+). Calls it cannot take (masks, other head sizes, short sequences, CPU, no Triton) "
                   "run the original attention; each reason is logged once. Works with any model, INT8 or not, "
                   "and with INT8 Lazy Torch Compile placed before or after it.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802 - ComfyUI's API name
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model whose attention to replace (a patched clone is "
                                               "returned; the input model is unchanged)."}),
                "pv_precision": (list(PV_CHOICES), {"default": "auto", "tooltip":
                                 "Precision of the attention-weights x values product. auto: 16-bit (on an H100 "
                                 "about 3x more accurate than fp8, and faster at Flux lengths; fp8 was 5% faster "
                                 "at Wan 480p). fp8: float8 e4m3, for "
                                 "GPUs with fp8 tensor cores (RTX 40xx, L40, H100 and newer); fails on others. "
                                 "16bit: the model's dtype. int8: both products on the int8 tensor cores, any "
                                 "GPU (experimental: not yet timed on a GPU; on the benchmark's random inputs "
                                 "its error, emulated on the CPU, is 1.8% against fp8's 3.9%)."}),
                "smooth_k": ("BOOLEAN", {"default": True, "tooltip":
                             "Subtract the keys' mean over the sequence before quantizing them. Does not change "
                             "the exact result (softmax ignores a shift per query) but halves the int8 error on "
                             "diffusion models' keys, which share a large offset. Leave on."}),
                "granularity": (["block", "token"], {"default": "block", "tooltip":
                                "One int8 scale per block of 64 queries/keys (block) or per token (token: a little "
                                "more accurate, a little slower)."}),
                "min_seq_len": ("INT", {"default": 1024, "min": 0, "max": 1 << 20, "step": 64, "tooltip":
                                "Attention calls with fewer queries than this run the original attention (at short "
                                "lengths int8 gains nothing). Flux at 1024x1024 has 4608 queries, Wan 480p 81 "
                                "frames 32760."}),
            }
        }

    def patch(self, model, pv_precision: str, smooth_k: bool, granularity: str,  # noqa: ANN001
              min_seq_len: int) -> tuple:
        options = AttentionOptions(pv_precision=pv_precision, smooth_k=smooth_k, granularity=granularity,
                                   min_seq_len=min_seq_len)
        return (patch_attention(model, options),)


NODE_CLASS_MAPPINGS: dict[str, type] = {"INT8Attention": INT8Attention}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {"INT8Attention": "INT8 Attention"}
