"""The defaults benchmark's pieces that need no ComfyUI: the compile node's defaults (bench/comfy_run.py, shared
with the families benchmark) and the markdown table."""

from __future__ import annotations

from comfy_int8_w8a8.bench import comfy_run, defaults
from comfy_int8_w8a8.cli.bench import BENCHES


def test_defaults_is_a_registered_bench() -> None:
    assert "defaults" in BENCHES


def test_node_defaults_are_the_compile_nodes_input_defaults() -> None:
    kwargs = comfy_run.node_defaults()
    assert kwargs["backend"] == "inductor" and kwargs["mode"] == "default" and kwargs["dynamic"] == "true"
    assert "model" not in kwargs and comfy_run.node_defaults("eager")["backend"] == "eager"


def test_markdown_table_ratios_are_against_stock_compile() -> None:
    cell = dict.fromkeys(defaults.FIELDS)
    results = {"bf16_stock_compile": {"1024x1024": {**cell, "step_ms": 200.0, "first_call_s": 10.0}},
               "ours_loader_node": {"1024x1024": {**cell, "step_ms": 100.0, "first_call_s": 30.0, "cos": 0.999}}}
    table = defaults.markdown_table(results)
    row = next(line for line in table.splitlines() if "ours_loader_node" in line)
    assert "| 0.50x |" in row and "| 3.00x |" in row and "0.999" in row
    assert len(table.splitlines()) == 4


class _Patcher:
    """What INT8 Attention needs of a ModelPatcher: ``model_options`` and a ``clone`` that copies them."""

    def __init__(self, model_options: dict | None = None) -> None:
        self.model_options = model_options or {"transformer_options": {}}

    def clone(self) -> _Patcher:
        return _Patcher({k: dict(v) if isinstance(v, dict) else v for k, v in self.model_options.items()})


def test_attention_variants_add_the_int8_attention_node_at_its_defaults() -> None:
    from comfy_int8_w8a8.nodes.attention_node import OVERRIDE_KEY, INT8Attention
    from comfy_int8_w8a8.nodes.attention_override import Int8AttentionOverride

    assert defaults.LOADS["ours_loader_attention"] == ("ours", "+attention")
    assert defaults.LOADS["ours_loader_node_attention"] == ("ours", "node+attention")
    assert not {"ours_loader_attention", "ours_loader_node_attention"} & set(defaults.DEFAULT_VARIANTS)
    original = _Patcher()
    patched = comfy_run.int8_attention(original)
    override = patched.model_options["transformer_options"][OVERRIDE_KEY]
    assert isinstance(override, Int8AttentionOverride) and OVERRIDE_KEY not in original.model_options[
        "transformer_options"]
    widgets = INT8Attention.INPUT_TYPES()["required"]
    assert override.options.min_seq_len == widgets["min_seq_len"][1]["default"]
    assert override.options.pv_precision == widgets["pv_precision"][1]["default"]
