"""The model families of ``comfy-int8 bench families``: ComfyUI's own model config at the published size, a tiny
size of the same class, the workload (latent shape, text tokens) and the conditioning each family's model reads.

A family's ``config`` is the ``unet_config`` ComfyUI's detection (``comfy/model_detection.py``) returns for the
published checkpoint; ``tests/integration/test_families.py`` checks that claim on a meta-device build. ``tiny``
overrides it for CPU tests. Where detection reads the sizes from the weights (Flux, Flux.2, Wan, LTX, HunyuanVideo,
SD3) a tiny file is detected as it is; where it hard-codes them (Chroma's approximator, Qwen-Image, HiDream,
Lumina 2 / Z-Image), ``tiny_needs_sizes`` names the keys :func:`bench.family_models.tiny_sizes` hands ComfyUI
after its own detection picked the model class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Family", "FAMILIES", "DEFAULT_FAMILIES"]


@dataclass(frozen=True)
class Family:
    """One family: ``model_class`` is the ``comfy.supported_models`` class detection must pick; ``latent`` the
    latent shape of the usual resolution (``tiny_latent`` at tiny size); ``context`` ``(tokens, width)`` of the text
    stream; ``pooled`` the pooled-text width (0: none); ``extra`` more conditioning keys (``CONDITIONING`` dict; ``attention_mask``: the fraction of text tokens
    that are real, the rest padding, as the family's text encoder node marks them);
    ``outlier_layers`` the input projections whose output rows get the salient channels."""

    name: str
    preset: str
    model_class: str
    resolution: str
    config: dict
    tiny: dict
    latent: tuple[int, ...]
    tiny_latent: tuple[int, ...]
    context: tuple[int, int]
    tiny_context: tuple[int, int]
    pooled: int = 0
    tiny_pooled: int = 0
    extra: dict = field(default_factory=dict)
    outlier_layers: tuple[str, ...] = ()
    tiny_needs_sizes: tuple[str, ...] = ()

    def unet_config(self, tiny: bool) -> dict:
        return {**self.config, **self.tiny} if tiny else dict(self.config)


_FLUX_DEV = {"image_model": "flux", "axes_dim": [16, 56, 56], "num_heads": 24, "mlp_ratio": 4.0, "theta": 10000,
             "out_channels": 16, "qkv_bias": True, "txt_ids_dims": [], "in_channels": 16, "hidden_size": 3072,
             "context_in_dim": 4096, "patch_size": 2, "vec_in_dim": 768, "depth": 19, "depth_single_blocks": 38,
             "guidance_embed": True, "yak_mlp": False, "txt_norm": False}
_FLUX_TINY = {"hidden_size": 128, "num_heads": 1, "depth": 1, "depth_single_blocks": 1, "context_in_dim": 64}
# FLUX.2 [klein] 4B: Qwen3-4B text features (3 layers x 2560), 128-channel latents at 1/16, no guidance embedder.
_FLUX2_KLEIN = {"image_model": "flux2", "axes_dim": [32, 32, 32, 32], "num_heads": 24, "mlp_ratio": 3.0, "theta": 2000,
                "out_channels": 128, "global_modulation": True, "mlp_silu_act": True, "qkv_bias": False,
                "ops_bias": False, "default_ref_method": "index", "ref_index_scale": 10.0, "txt_ids_dims": [3],
                "in_channels": 128, "hidden_size": 3072, "context_in_dim": 7680, "patch_size": 1, "vec_in_dim": None,
                "depth": 5, "depth_single_blocks": 20, "guidance_embed": False, "yak_mlp": False, "txt_norm": False}
_CHROMA = {"image_model": "chroma", "axes_dim": [16, 56, 56], "num_heads": 24, "mlp_ratio": 4.0, "theta": 10000,
           "out_channels": 64, "qkv_bias": True, "txt_ids_dims": [], "in_channels": 64, "hidden_size": 3072,
           "context_in_dim": 4096, "patch_size": 2, "vec_in_dim": None, "depth": 19, "depth_single_blocks": 38,
           "in_dim": 64, "out_dim": 3072, "hidden_dim": 5120, "n_layers": 5}
_WAN = {"image_model": "wan2.1", "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True,
        "cross_attn_norm": True, "eps": 1e-6, "model_type": "t2v"}
_WAN_TINY = {"dim": 128, "num_heads": 1, "ffn_dim": 256, "num_layers": 1}
_LUMINA_TINY = {"dim": 128, "cap_feat_dim": 64, "n_layers": 1, "n_heads": 1, "n_kv_heads": 1}

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("flux1_dev", "flux", "Flux", "1024x1024", _FLUX_DEV, _FLUX_TINY,
           (1, 16, 128, 128), (1, 16, 16, 16), (512, 4096), (8, 64), pooled=768, tiny_pooled=768,
           extra={"guidance": 3.5}, outlier_layers=("img_in", "txt_in")),
    Family("flux2_klein_4b", "flux2", "Flux2", "1024x1024", _FLUX2_KLEIN,
           {"hidden_size": 128, "num_heads": 1, "depth": 1, "depth_single_blocks": 1, "context_in_dim": 96},
           (1, 128, 64, 64), (1, 128, 8, 8), (512, 7680), (8, 96), outlier_layers=("img_in", "txt_in")),
    Family("chroma", "chroma", "Chroma", "1024x1024", _CHROMA,
           {**_FLUX_TINY, "out_dim": 128, "hidden_dim": 64, "n_layers": 1},
           (1, 16, 128, 128), (1, 16, 16, 16), (512, 4096), (8, 64), extra={"guidance": 0.0},
           outlier_layers=("img_in", "txt_in"), tiny_needs_sizes=("out_dim", "hidden_dim", "n_layers")),
    Family("qwen_image", "qwen_image", "QwenImage", "1328x1328",
           {"image_model": "qwen_image", "in_channels": 64, "num_layers": 60},
           {"num_layers": 1, "num_attention_heads": 1, "joint_attention_dim": 64},
           (1, 16, 1, 166, 166), (1, 16, 1, 16, 16), (256, 3584), (8, 64), outlier_layers=("img_in", "txt_in"),
           tiny_needs_sizes=("num_attention_heads", "joint_attention_dim")),
    Family("wan21_14b_t2v", "wan", "WAN21_T2V", "832x480x81",
           {**_WAN, "dim": 5120, "out_dim": 16, "num_heads": 40, "ffn_dim": 13824, "num_layers": 40, "in_dim": 16},
           _WAN_TINY, (1, 16, 21, 60, 104), (1, 16, 2, 8, 8), (512, 4096), (8, 4096),
           outlier_layers=("patch_embedding", "text_embedding.2")),
    Family("wan22_5b_ti2v", "wan", "WAN22_T2V", "1280x704x121",
           {**_WAN, "dim": 3072, "out_dim": 48, "num_heads": 24, "ffn_dim": 14336, "num_layers": 30, "in_dim": 48},
           _WAN_TINY, (1, 48, 31, 44, 80), (1, 48, 2, 8, 8), (512, 4096), (8, 4096),
           outlier_layers=("patch_embedding", "text_embedding.2")),
    Family("ltxv_2b", "ltxv", "LTXV", "768x512x97",
           {"image_model": "ltxv", "num_layers": 28, "attention_head_dim": 64, "cross_attention_dim": 2048},
           {"num_layers": 1, "attention_head_dim": 4, "cross_attention_dim": 128},
           (1, 128, 13, 16, 24), (1, 128, 2, 4, 4), (128, 4096), (8, 4096),
           extra={"frame_rate": 25, "attention_mask": 0.75},
           outlier_layers=("patchify_proj", "caption_projection.linear_2")),
    Family("hunyuan_video", "hunyuan_video", "HunyuanVideo", "848x480x73",
           {"image_model": "hunyuan_video", "in_channels": 16, "patch_size": [1, 2, 2], "out_channels": 16,
            "vec_in_dim": 768, "axes_dim": [16, 56, 56], "meanflow": False, "context_in_dim": 4096,
            "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 20, "depth_single_blocks": 40,
            "theta": 256, "qkv_bias": True, "byt5": False, "guidance_embed": True, "use_cond_type_embedding": False,
            "vision_in_dim": None, "meanflow_sum": False},
           {"hidden_size": 128, "num_heads": 1, "depth": 1, "depth_single_blocks": 1, "context_in_dim": 64},
           (1, 16, 19, 60, 106), (1, 16, 2, 8, 8), (256, 4096), (8, 64), pooled=768, tiny_pooled=768,
           extra={"guidance": 6.0}, outlier_layers=("img_in.proj", "txt_in.input_embedder")),
    Family("sd35_large", "sd3", "SD3", "1024x1024",
           {"in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 38, "input_size": None,
            "adm_in_channels": 2048, "context_embedder_config": {"target": "torch.nn.Linear", "params": {
                "in_features": 4096, "out_features": 2432}}, "num_patches": 36864, "pos_embed_max_size": 192,
            "qk_norm": "rms", "pos_embed_scaling_factor": None, "x_block_self_attn_layers": []},
           {"depth": 2, "adm_in_channels": 64, "num_patches": 1024, "pos_embed_max_size": 32,
            "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 64, "out_features": 128}}},
           (1, 16, 128, 128), (1, 16, 16, 16), (333, 4096), (8, 64), pooled=2048, tiny_pooled=64,
           outlier_layers=("x_embedder.proj", "context_embedder")),
    Family("hidream_i1", "hidream", "HiDream", "1024x1024",
           {"image_model": "hidream", "attention_head_dim": 128, "axes_dims_rope": [64, 32, 32],
            "caption_channels": [4096, 4096], "max_resolution": [128, 128], "in_channels": 16,
            "llama_layers": list(range(32)) + [31] * 16, "num_attention_heads": 20, "num_routed_experts": 4,
            "num_activated_experts": 2, "num_layers": 16, "num_single_layers": 32, "out_channels": 16,
            "patch_size": 2, "text_emb_dim": 2048},
           {"num_attention_heads": 1, "num_layers": 1, "num_single_layers": 1, "caption_channels": [64, 64],
            "text_emb_dim": 64, "llama_layers": [0, 1]},
           (1, 16, 128, 128), (1, 16, 16, 16), (128, 4096), (8, 64), pooled=2048, tiny_pooled=64,
           extra={"llama_tokens": 128}, outlier_layers=("x_embedder.proj",),
           tiny_needs_sizes=("num_attention_heads", "num_layers", "num_single_layers", "caption_channels",
                             "text_emb_dim", "llama_layers")),
    Family("lumina2", "lumina2", "Lumina2", "1024x1024",
           {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 2304, "cap_feat_dim": 2304,
            "n_layers": 26, "qk_norm": True, "n_heads": 24, "n_kv_heads": 8, "axes_dims": [32, 32, 32],
            "axes_lens": [300, 512, 512], "rope_theta": 10000.0, "ffn_dim_multiplier": 4.0},
           {**_LUMINA_TINY, "axes_dims": [32, 48, 48]}, (1, 16, 128, 128), (1, 16, 16, 16), (256, 2304), (8, 64),
           outlier_layers=("x_embedder", "cap_embedder.1"), tiny_needs_sizes=("n_heads", "n_kv_heads", "axes_dims")),
    Family("z_image", "lumina2", "ZImage", "1024x1024",
           {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 3840, "cap_feat_dim": 2560,
            "n_layers": 30, "qk_norm": True, "n_heads": 30, "n_kv_heads": 30, "axes_dims": [32, 48, 48],
            "axes_lens": [1536, 512, 512], "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0,
            "z_image_modulation": True, "time_scale": 1000.0, "pad_tokens_multiple": 32},
           # dim 256: Z-Image's timestep embedding is 256 wide, its blocks' adaLN reads min(dim, 256)
           {**_LUMINA_TINY, "dim": 256, "n_heads": 2, "n_kv_heads": 2}, (1, 16, 128, 128), (1, 16, 16, 16),
           (256, 2560), (8, 64),
           outlier_layers=("x_embedder", "cap_embedder.1"),
           tiny_needs_sizes=("n_heads", "n_kv_heads", "axes_dims", "axes_lens", "rope_theta", "ffn_dim_multiplier",
                             "z_image_modulation", "time_scale", "pad_tokens_multiple", "dim")),
)}
DEFAULT_FAMILIES = tuple(FAMILIES)
