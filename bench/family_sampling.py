"""Sampling through ComfyUI's own ``comfy.sample.sample`` (what KSampler runs) for the family benchmark and tests:
one forward at a chosen sigma (the model's raw prediction, recovered from the sampler's callback), and a timed
Euler run. Every family here is a flow-matching model (``x = sigma * noise + (1 - sigma) * x0``, ComfyUI's CONST
sampling), so the prediction is ``v = (x - denoised) / sigma`` exactly."""

from __future__ import annotations

import statistics
import time
from typing import NamedTuple

import torch

from .comfy_run import sync

__all__ = ["zero_negative", "model_output", "sample_timed", "timed_run", "TimedRun", "cosine", "MID_SIGMA",
           "LORA_STRENGTHS", "lora_runs", "cap_vram", "streamed_layers", "profile_steps"]

MID_SIGMA = 0.5
# (field prefix, strength) of the LoRA runs: applied at 1.0, then changed to 0.5 without reading the file again
LORA_STRENGTHS = (("lora", 1.0), ("lora_restrength", 0.5))


def zero_negative(positive: list) -> list:
    """What ConditioningZeroOut makes of ``positive`` (cfg 1.0 never evaluates it: ComfyUI's cfg1 optimisation)."""
    return [[torch.zeros_like(c), {k: torch.zeros_like(v) if isinstance(v, torch.Tensor) else v
                                   for k, v in extra.items()}] for c, extra in positive]


def model_output(patcher, noise: torch.Tensor, positive: list, sigma: float = MID_SIGMA) -> torch.Tensor:  # noqa: ANN001
    """The diffusion model's prediction (float32, CPU) for ``sigma * noise`` at ``sigma``: one Euler step of
    ``comfy.sample.sample`` from ``sigma`` to 0, cfg 1, through every wrapper the patcher carries (compile ones too)."""
    import comfy.sample

    seen: dict[str, torch.Tensor] = {}

    def callback(step: int, denoised: torch.Tensor, x: torch.Tensor, total: int) -> None:
        seen["v"] = ((x.float() - denoised.float()) / sigma).cpu()

    latent = torch.zeros_like(noise)
    sigmas = torch.tensor([sigma, 0.0])
    comfy.sample.sample(patcher, noise, 1, 1.0, "euler", "simple", positive, zero_negative(positive), latent,
                        sigmas=sigmas, callback=callback, disable_pbar=True, seed=0)
    return seen["v"]


def sample_timed(patcher, noise: torch.Tensor, positive: list, steps: int) -> tuple[torch.Tensor, list[float]]:  # noqa: ANN001
    """``steps`` Euler steps (scheduler simple, cfg 1) from pure noise; returns the final latent (float32, CPU)
    and the wall milliseconds of each step (the first includes the call's setup: loading, compiling)."""
    import comfy.sample

    stamps: list[float] = []

    def callback(step: int, denoised: torch.Tensor, x: torch.Tensor, total: int) -> None:
        sync()
        stamps.append(time.perf_counter())

    latent = torch.zeros_like(noise)
    sync()
    start = time.perf_counter()
    out = comfy.sample.sample(patcher, noise, steps, 1.0, "euler", "simple", positive, zero_negative(positive),
                              latent, callback=callback, disable_pbar=True, seed=0)
    times = [(b - a) * 1e3 for a, b in zip([start, *stamps[:-1]], stamps)]
    return out.float().cpu(), times


class TimedRun(NamedTuple):
    prediction: torch.Tensor  # model_output's, float32 CPU
    latent: torch.Tensor  # the final latent of the timed call, float32 CPU
    first_call_s: float  # the model_output call
    step_ms: float  # median step of the timed call, its first step left out


def timed_run(patcher, noise: torch.Tensor, positive: list, steps: int) -> TimedRun:  # noqa: ANN001
    """What the benchmarks time per model: the first call (:func:`model_output`: ComfyUI loads the model to the GPU
    and compiled variants compile here), then ``steps`` Euler steps (:func:`sample_timed`)."""
    sync()
    start = time.perf_counter()
    prediction = model_output(patcher, noise, positive)
    sync()
    first_call_s = time.perf_counter() - start
    latent, step_times = sample_timed(patcher, noise, positive, steps)
    return TimedRun(prediction, latent, first_call_s, statistics.median(step_times[1:] or step_times))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two tensors, flattened, in float64."""
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def lora_runs(patcher, lora_file: str, noise: torch.Tensor, positive: list, steps: int) -> dict:  # noqa: ANN001
    """A LoRA on ``patcher``'s model as LoraLoaderModelOnly applies it (``comfy.sd.load_lora_for_models``): the file
    read once (``lora_read_s``), then per :data:`LORA_STRENGTHS` a timed run (``<prefix>_first_call_s``: the apply
    and the first call, in which ComfyUI patches the weights; ``<prefix>_step_ms``). ``_prediction``: the
    strength-1.0 prediction (float32, CPU), for the caller's cosine."""
    import comfy.sd
    import comfy.utils

    start = time.perf_counter()
    lora = comfy.utils.load_torch_file(str(lora_file), safe_load=True)
    out: dict = {"lora_read_s": round(time.perf_counter() - start, 2)}
    for key, strength in LORA_STRENGTHS:
        start = time.perf_counter()
        patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora, strength, 0)
        apply_s = time.perf_counter() - start  # (a clone and a key map: the patching itself is in the first call)
        run = timed_run(patched, noise, positive, steps)
        out[f"{key}_first_call_s"] = round(apply_s + run.first_call_s, 2)
        out[f"{key}_step_ms"] = round(run.step_ms, 2)
        if strength == 1.0:
            out["_prediction"] = run.prediction
        del patched
    return out


def cap_vram(cap_gib: float) -> None:
    """Reserve all of the GPU but ``cap_gib`` from ComfyUI's model management (what its ``--reserve-vram`` sets), so
    a model that does not fit loads partially, as on a smaller card. No effect without CUDA."""
    import comfy.model_management as mm

    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        mm.EXTRA_RESERVED_VRAM = max(0, total - int(cap_gib * 2**30))


def streamed_layers(patcher) -> int:  # noqa: ANN001
    """Linear layers ComfyUI left off the GPU and casts per call (0 where the whole model is resident)."""
    return sum(1 for m in patcher.model.modules()
               if isinstance(m, torch.nn.Linear) and getattr(m, "comfy_cast_weights", False))


def profile_steps(patcher, noise: torch.Tensor, positive: list, steps: int) -> tuple[str, float | None]:  # noqa: ANN001
    """``steps`` more Euler steps under torch.profiler: the op table (by GPU time where there is a GPU, else by CPU
    time) and the summed kernel and copy milliseconds per step (None without CUDA). On one stream that is the GPU's
    busy time: a step's wall time minus it is what launches and the host cost."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        sample_timed(patcher, noise, positive, steps)
    averages = prof.key_averages()
    table = averages.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=30,
                           max_name_column_width=90)
    if not cuda:
        return table, None
    # device-side events only (kernels, copies); the ops that launched them carry the same time again
    busy_us = sum(e.self_device_time_total for e in averages if e.device_type == torch.autograd.DeviceType.CUDA)
    return table, busy_us / 1e3 / steps
