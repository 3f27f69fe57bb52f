"""Compile settings and the disable_dynamic clone, with fake patchers (no ComfyUI)."""

import logging

import pytest
import torch
import torch.nn as nn

from comfy_int8_w8a8.compile import (
    NO_DISABLE_DYNAMIC_MESSAGE,
    CompileSettings,
    DisableDynamicUnsupportedError,
    TransformerOptionsGuardFilter,
    clone_for_compile,
    find_blocks,
    parse_dynamic,
)


class NewPatcher:
    """ComfyUI >= 0.15.1: clone takes disable_dynamic."""

    def __init__(self) -> None:
        self.clone_kwargs = None

    def clone(self, disable_dynamic=False, model_override=None, force_deepcopy=False):  # noqa: ANN001, ANN201
        self.clone_kwargs = {"disable_dynamic": disable_dynamic}
        return "clone"


class OldPatcher:
    """An older host: clone() takes nothing; ``dynamic`` says whether it uses dynamic VRAM."""

    def __init__(self, dynamic: bool) -> None:
        self.dynamic = dynamic
        self.clones = 0

    def is_dynamic(self) -> bool:
        return self.dynamic

    def clone(self):  # noqa: ANN201
        self.clones += 1
        return "clone"


def test_clone_for_compile_passes_disable_dynamic_when_supported():
    patcher = NewPatcher()
    assert clone_for_compile(patcher, True) == "clone"
    assert patcher.clone_kwargs == {"disable_dynamic": True}


def test_clone_for_compile_option_off_uses_plain_clone():
    patcher = NewPatcher()
    clone_for_compile(patcher, False)
    assert patcher.clone_kwargs == {"disable_dynamic": False}


def test_clone_without_argument_on_dynamic_patcher_raises_with_fix():
    with pytest.raises(DisableDynamicUnsupportedError) as err:
        clone_for_compile(OldPatcher(dynamic=True), True)
    assert str(err.value).startswith(NO_DISABLE_DYNAMIC_MESSAGE)
    assert "Update ComfyUI" in str(err.value) and "disable_dynamic_vram off" in str(err.value)


def test_clone_without_argument_on_static_patcher_warns_and_clones(caplog):
    patcher = OldPatcher(dynamic=False)
    with caplog.at_level(logging.WARNING, logger="comfy_int8_w8a8"):
        assert clone_for_compile(patcher, True) == "clone"
    assert patcher.clones == 1
    assert any(r.getMessage().startswith(NO_DISABLE_DYNAMIC_MESSAGE) for r in caplog.records)


def test_parse_dynamic_maps_choices_and_rejects_others():
    assert (parse_dynamic("auto"), parse_dynamic("true"), parse_dynamic("false")) == (None, True, False)
    with pytest.raises(ValueError, match="auto, true, false"):
        parse_dynamic("yes")


def test_settings_reject_bad_mode_and_cache_size():
    with pytest.raises(ValueError, match="mode must be one of"):
        CompileSettings(mode="fast")
    with pytest.raises(ValueError, match="0..2048"):
        CompileSettings(cache_size_limit=4096)


def test_mode_with_guard_filter_becomes_inductor_options_torch_accepts():
    # torch.compile refuses mode= and options= together; the guard filter must ride in options.
    guard_filter = TransformerOptionsGuardFilter()
    kwargs = CompileSettings(mode="max-autotune-no-cudagraphs").torch_compile_kwargs(guard_filter)
    assert "mode" not in kwargs
    assert kwargs["options"]["guard_filter_fn"] is guard_filter
    assert kwargs["options"]["max_autotune"] is True
    torch.compile(nn.Linear(2, 2), **kwargs)  # builds lazily; raises here if the combination is refused


def test_mode_without_guard_filter_is_passed_as_mode():
    kwargs = CompileSettings(mode="reduce-overhead", use_guard_filter=False).torch_compile_kwargs(None)
    assert kwargs["mode"] == "reduce-overhead" and "options" not in kwargs


def test_find_blocks_reads_every_known_block_list():
    model = nn.Module()
    model.double_blocks = nn.ModuleList([nn.Identity(), nn.Identity()])
    model.single_blocks = nn.ModuleList([nn.Identity()])
    model.final_layer = nn.Linear(2, 2)
    assert find_blocks(model, "diffusion_model.") == [
        "diffusion_model.double_blocks.0", "diffusion_model.double_blocks.1", "diffusion_model.single_blocks.0"]


def test_guard_filter_keeps_guards_not_on_transformer_options():
    class Entry:
        def __init__(self, name: str) -> None:
            self.name = name

    guard_filter = TransformerOptionsGuardFilter()
    keep = guard_filter([Entry("L['x']"), Entry("L['transformer_options']['patches']")])
    assert keep == [True, False]
    assert guard_filter.dropped == ["L['transformer_options']['patches']"]
