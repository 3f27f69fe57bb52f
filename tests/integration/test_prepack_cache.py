"""``prepack_int8_weights`` through the real loader and ComfyUI (in-process, CPU): the first load writes the weight
cache, the next reads it without reading the 16-bit file or quantizing, and gives the same int8 numbers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import safetensors.torch as st
import torch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def loader(comfy_cpu):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import tiny_flux

    from comfy_int8_w8a8.nodes import loader_node

    loader_node.tiny_flux = tiny_flux
    return loader_node


@pytest.fixture()
def flux(loader, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("INT8_W8A8_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "flux_bf16.safetensors"
    st.save_file(loader.tiny_flux(), str(path))
    return path


def _int8_tensors(patcher) -> dict[str, torch.Tensor]:  # noqa: ANN001
    sd = patcher.model.diffusion_model.state_dict()
    return {k: v for k, v in sd.items() if v.dtype == torch.int8 or k.endswith(("weight_scale", "input_smooth"))}


def _entries(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "cache"
    return sorted(folder.glob("*.int8cache.safetensors")) if folder.is_dir() else []


def _forbid_source_reads(loader, monkeypatch) -> None:  # noqa: ANN001
    import comfy_int8_w8a8.int8.formats as formats

    def fail(*a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("the source file was read although the cache should serve")

    monkeypatch.setattr(formats, "load_state_dict_for_comfy", fail)
    monkeypatch.setattr("comfy_int8_w8a8.int8.quantize_model.quantize_linear_weight", fail)


@pytest.mark.parametrize("method", ["hadamard", "smooth", "none"])
def test_first_load_writes_cache_and_second_reads_it_bit_identically(loader, flux, tmp_path, monkeypatch, method):
    opts = loader.LoaderOptions(prepack_int8_weights=True, outlier_method=method)
    fresh = _int8_tensors(loader.load_int8_diffusion_model(str(flux), loader.LoaderOptions(outlier_method=method)))
    assert _entries(tmp_path) == []  # the option off writes nothing
    loader.load_int8_diffusion_model(str(flux), opts)
    assert len(_entries(tmp_path)) == 1
    _forbid_source_reads(loader, monkeypatch)
    cached = _int8_tensors(loader.load_int8_diffusion_model(str(flux), opts))
    assert fresh and set(cached) == set(fresh)
    assert all(torch.equal(cached[k], fresh[k]) for k in fresh)
    if method == "smooth":
        assert any(k.endswith("input_smooth") for k in cached)


def test_hit_loads_the_same_model_as_quantizing_again(loader, flux) -> None:
    opts = loader.LoaderOptions(prepack_int8_weights=True)
    miss = loader.load_int8_diffusion_model(str(flux), opts).model
    hit = loader.load_int8_diffusion_model(str(flux), opts).model
    # ComfyUI treats the hit like the 16-bit load (not as a mixed-precision int8 file): same dtypes, no manual cast
    assert (hit.get_dtype(), hit.manual_cast_dtype) == (miss.get_dtype(), miss.manual_cast_dtype)
    first, second = miss.diffusion_model.state_dict(), hit.diffusion_model.state_dict()
    assert set(first) == set(second)
    assert all(torch.equal(first[k].float(), second[k].float()) and first[k].dtype == second[k].dtype for k in first)


def test_recorded_model_dtype_is_applied_on_the_same_device_type_only(loader, flux, monkeypatch) -> None:
    opts = loader.LoaderOptions(prepack_int8_weights=True)
    loader.load_int8_diffusion_model(str(flux), opts)
    cache = loader._weight_cache_for(str(flux), opts)
    cached = loader.read_cache(cache.file, cache.key)
    assert cached.facts == {"device": "cpu", "model_dtype": "float32"}
    cached.facts["model_dtype"] = "float16"
    assert loader._cached_dtype(cached, opts, torch.device("cpu")) == torch.float16
    assert loader._cached_dtype(cached, opts, torch.device("cuda")) is None
    assert loader._cached_dtype(cached, loader.LoaderOptions(weight_dtype="fp8_e4m3fn"), torch.device("cpu")) is None


def test_changed_source_rebuilds_in_the_same_slot(loader, flux, tmp_path, caplog) -> None:
    opts = loader.LoaderOptions(prepack_int8_weights=True)
    loader.load_int8_diffusion_model(str(flux), opts)
    [entry] = _entries(tmp_path)
    sd = loader.tiny_flux()
    sd = {k: (v * 2 if k == "img_in.weight" else v) for k, v in sd.items()}
    st.save_file(sd, str(flux))
    os.utime(flux, ns=(1, 1))
    patcher = loader.load_int8_diffusion_model(str(flux), opts)
    assert _entries(tmp_path) == [entry]  # replaced, not added
    assert sum("source file changed" in r.getMessage() for r in caplog.records) == 1
    img_in = patcher.model.diffusion_model.state_dict()["img_in.weight"]
    assert torch.equal(img_in.float(), sd["img_in.weight"].float())


def test_changed_options_get_their_own_entry(loader, flux, tmp_path) -> None:
    loader.load_int8_diffusion_model(str(flux), loader.LoaderOptions(prepack_int8_weights=True))
    loader.load_int8_diffusion_model(str(flux), loader.LoaderOptions(prepack_int8_weights=True, outlier_method="none"))
    loader.load_int8_diffusion_model(str(flux), loader.LoaderOptions(prepack_int8_weights=True, weight_dtype="fp8_e4m3fn"))
    assert len(_entries(tmp_path)) == 2  # weight_dtype is applied after the cache: it shares the entry


def test_int8_file_and_quantization_off_write_no_cache(loader, flux, tmp_path) -> None:
    int8 = tmp_path / "flux_int8.safetensors"
    loader.load_int8_diffusion_model(str(flux), loader.LoaderOptions(prepack_int8_weights=True))
    [entry] = _entries(tmp_path)
    os.replace(entry, int8)  # a cache file is a ComfyUI-native int8 file
    loader.load_int8_diffusion_model(str(int8), loader.LoaderOptions(prepack_int8_weights=True))
    loader.load_int8_diffusion_model(str(flux), loader.LoaderOptions(prepack_int8_weights=True,
                                                                      on_the_fly_quantization=False))
    assert _entries(tmp_path) == []


def test_default_folder_is_in_comfyuis_user_directory(loader, monkeypatch) -> None:
    import folder_paths

    monkeypatch.delenv("INT8_W8A8_CACHE_DIR", raising=False)
    assert loader.weight_cache_folder() == Path(folder_paths.get_user_directory()) / "int8_w8a8_cache"
    monkeypatch.setenv("INT8_W8A8_CACHE_DIR", "~/elsewhere")
    assert loader.weight_cache_folder() == Path.home() / "elsewhere"


def test_a_load_keeps_tuned_kernel_choices_in_comfyuis_user_directory(loader, flux, monkeypatch) -> None:
    import folder_paths

    from comfy_int8_w8a8.int8.launch import tuning_cache

    monkeypatch.delenv(tuning_cache.ENV, raising=False)
    monkeypatch.setattr(tuning_cache, "_app_directory", None)
    assert tuning_cache.directory() == tuning_cache.default_directory()
    loader.load_int8_diffusion_model(str(flux), loader.LoaderOptions())
    assert tuning_cache.directory() == Path(folder_paths.get_user_directory()) / "int8_w8a8_tuning"
    monkeypatch.setenv(tuning_cache.ENV, "off")
    assert tuning_cache.directory() is None  # the environment still wins
