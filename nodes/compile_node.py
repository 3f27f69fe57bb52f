"""The "INT8 Lazy Torch Compile" node: clone the model and install the lazy compile wrapper; compiles nothing.

V1 node style (``INPUT_TYPES`` classmethod, ComfyUI imported inside ``compile``) so it registers on any host.
"""

from __future__ import annotations

from ..compile import BACKENDS, MODES, CompileSettings, LazyCompiler, clone_for_compile, parse_dynamic

WRAPPER_KEY = "comfy_int8_w8a8.lazy_torch_compile"
STOCK_WRAPPER_KEY = "torch.compile"  # comfy_api.torch_helpers.torch_compile.COMPILE_KEY


class INT8LazyTorchCompile:
    """Compile the diffusion model (or each transformer block) at the first sampling call."""

    CATEGORY = "advanced/int8"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "compile"
    DESCRIPTION = ("torch.compile the model at the first sampling call, after INT8 modules and LoRA patches are in "
                   "place. If compiling fails, sampling continues uncompiled and the reason is logged once.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802 - ComfyUI's API name
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to compile (INT8 or any other)."}),
                "backend": (list(BACKENDS), {"default": "inductor", "tooltip":
                            "torch.compile backend. inductor generates fused kernels (needs Triton on GPU, a C++ "
                            "compiler on CPU); cudagraphs only records CUDA graphs."}),
                "fullgraph": ("BOOLEAN", {"default": False, "tooltip":
                              "Require each compiled block (or the whole model) to be one graph; a graph break "
                              "then fails the compile and sampling falls back to uncompiled. The embedders and "
                              "final layer around the blocks may always graph-break."}),
                "mode": (list(MODES), {"default": "default", "tooltip":
                         "inductor mode. reduce-overhead records CUDA graphs: the fastest choice for INT8 models "
                         "(int8 layers are many short kernels; on an H100 the loader's Flux-dev step took 113-118 ms "
                         "with it, 114-157 ms without, depending on the host CPU), needs the whole model on the GPU "
                         "(falls back without graphs on lowvram). max-autotune tunes GEMM tiles (slow first run)."}),
                "dynamic": (["auto", "true", "false"], {"default": "true", "tooltip":
                            "Shape handling: true compiles shape-generic graphs (no recompiles when the resolution "
                            "changes), false specialises to each shape, auto lets torch decide after a change."}),
                "compile_transformer_blocks_only": ("BOOLEAN", {"default": True, "tooltip":
                                                    "Compile each transformer block on its own, and the embedders "
                                                    "and final layer around them (those never as CUDA graphs), "
                                                    "instead of the whole model: compiles in seconds, reused "
                                                    "across identical blocks. On an H100, Flux-dev 1024x1024: first "
                                                    "sampling call 44 s on, 181 s off; 119 vs 112 ms per step."}),
                "dynamo_cache_size_limit": ("INT", {"default": 640, "min": 0, "max": 2048, "step": 1, "tooltip":
                                            "torch._dynamo.config.cache_size_limit: compiled variants kept per "
                                            "function before falling back to eager (0 keeps torch's value)."}),
                "use_guard_filter": ("BOOLEAN", {"default": True, "tooltip":
                                     "Drop TorchDynamo guards on transformer_options, as the stock TorchCompileModel "
                                     "does, so per-step option changes do not recompile."}),
                "disable_dynamic_vram": ("BOOLEAN", {"default": True, "tooltip":
                                         "Clone the model with dynamic VRAM disabled (ComfyUI >= 0.15.1), so the "
                                         "compiled graph sees weights that stay in place."}),
                "log_compile": ("BOOLEAN", {"default": False, "tooltip":
                                "Log what is compiled, when, and how many graphs each call compiled."}),
            }
        }

    def compile(self, model, backend: str, fullgraph: bool, mode: str, dynamic: str,  # noqa: ANN001
                compile_transformer_blocks_only: bool, dynamo_cache_size_limit: int, use_guard_filter: bool,
                disable_dynamic_vram: bool, log_compile: bool) -> tuple:
        from comfy.patcher_extension import WrappersMP

        settings = CompileSettings(
            backend=backend, mode=mode, fullgraph=fullgraph, dynamic=parse_dynamic(dynamic),
            blocks_only=compile_transformer_blocks_only, cache_size_limit=dynamo_cache_size_limit,
            use_guard_filter=use_guard_filter, log_compile=log_compile,
        )
        patched = clone_for_compile(model, disable_dynamic_vram)
        # One compile wrapper at a time: ours replaces a previous one and the stock node's.
        patched.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, WRAPPER_KEY)
        patched.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, STOCK_WRAPPER_KEY)
        patched.add_wrapper_with_key(WrappersMP.APPLY_MODEL, WRAPPER_KEY, LazyCompiler(settings))
        return (patched,)


NODE_CLASS_MAPPINGS: dict[str, type] = {"INT8LazyTorchCompile": INT8LazyTorchCompile}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {"INT8LazyTorchCompile": "INT8 Lazy Torch Compile"}
