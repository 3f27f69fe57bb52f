"""Harness for tests against the real ComfyUI: a headless CPU server with only this pack, tiny checkpoints, a client.

Where ComfyUI (``COMFYUI_PATH``, else /opt/ComfyUI or ../shared/comfyui) or a Python that can run it is missing,
every test here is skipped with the how-to. Workflow tests never import ComfyUI into the test process: checkpoints that need ComfyUI's
model classes are written by ``tiny_models.py`` in a subprocess, and everything else talks HTTP to the server. Tests
of our ops classes against ComfyUI's own import it in-process through the ``comfy_cpu`` fixture.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]


def _comfyui_path() -> Path:
    """COMFYUI_PATH, else the first of /opt/ComfyUI and ../shared/comfyui that holds a ComfyUI (as .ci/comfyui_path.sh)."""
    if os.environ.get("COMFYUI_PATH"):
        return Path(os.environ["COMFYUI_PATH"])
    candidates = (Path("/opt/ComfyUI"), REPO.parent / "shared" / "comfyui")
    return next((c for c in candidates if (c / "main.py").is_file()), candidates[0])


COMFYUI = _comfyui_path()
HOW_TO = ("To run them: put a ComfyUI checkout at COMFYUI_PATH (default /opt/ComfyUI, else ../shared/comfyui), "
          "build its venv with "
          "`bash .ci/integration_env.sh` and run `.venv-integration/bin/python -m pytest tests/integration` "
          "(.ci/run does both when ComfyUI is present).")
# What ComfyUI imports at start-up beyond torch; the unit venv has none of these.
_HOST_MODULES = ("torchvision", "torchaudio", "torchsde", "comfy_kitchen", "comfy_aimdo", "aiohttp", "av")
START_TIMEOUT_S = 180
RUN_TIMEOUT_S = 600


def host_problem() -> str | None:
    """Why ComfyUI cannot be run from this interpreter, or None."""
    if not (COMFYUI / "main.py").is_file():
        return f"no ComfyUI at {COMFYUI} (COMFYUI_PATH)"
    missing = [m for m in _HOST_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return f"this Python ({sys.executable}) lacks ComfyUI's requirements: {', '.join(missing)}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problem = host_problem()
    if problem is None:
        return
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason=f"integration tests skipped: {problem}. {HOW_TO}")
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(skip)



@pytest.fixture(scope="session")
def comfy_cpu():
    """ComfyUI's ``comfy`` package imported into the test process for CPU use (``cli_args.cpu`` set before
    ``comfy.model_management`` probes for a GPU), for tests of our ops classes against ComfyUI's own; skips with the
    how-to where COMFYUI holds no importable ComfyUI. Tests import the further ``comfy`` modules they use."""
    if not (COMFYUI / "comfy").is_dir():
        pytest.skip(f"no ComfyUI at {COMFYUI}. {HOW_TO}")
    if str(COMFYUI) not in sys.path:
        sys.path.insert(0, str(COMFYUI))
    try:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        import comfy.model_management
    except ImportError as exc:
        pytest.skip(f"comfy is not importable from {COMFYUI} ({exc}). {HOW_TO}")
    return comfy


@pytest.fixture
def cut_off_at(monkeypatch):  # noqa: ANN001, ANN201
    """``cut_off_at(bench_module, variant)``: that benchmark's ``_run_variant`` raises KeyboardInterrupt (what a
    device call's time limit looks like to the run: not an Exception, so not recorded as a failed variant) when it
    reaches ``variant``, and runs the others as before."""
    def install(module, variant: str) -> None:  # noqa: ANN001
        real = module._run_variant

        def cut_off(name, *rest):  # noqa: ANN001, ANN002, ANN202
            if name == variant:
                raise KeyboardInterrupt
            return real(name, *rest)

        monkeypatch.setattr(module, "_run_variant", cut_off)

    return install


# A text-encoder stand-in: a fixed random CONDITIONING of the width the model expects (stock nodes that need no
# text encoder emit a fixed 1024-wide one, Wan needs 4096). Installed only in the test server's custom_nodes.
_STUB_NODE = '''
import torch


class Int8TestConditioning:
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 1024, "min": 1, "max": 8192}),
                             "tokens": ("INT", {"default": 8, "min": 1, "max": 512}),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    def make(self, width, tokens, seed):
        gen = torch.Generator().manual_seed(seed)
        cond = torch.randn(1, tokens, width, generator=gen)
        return ([[cond, {"pooled_output": torch.randn(1, 768, generator=gen)}]],)


NODE_CLASS_MAPPINGS = {"Int8TestConditioning": Int8TestConditioning}
'''
STUB_NODE_DIR = "int8_test_conditioning"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyClient:
    """POST /prompt, poll /history, read outputs of one running server."""

    def __init__(self, url: str, base: Path, log: Path, files: dict) -> None:
        self.url, self.base, self.log = url, base, log
        self.files = files  # family -> {"bf16", "int8", "fakequant", "lora": file names, "int8_layers": [...]}
        self.client_id = uuid.uuid4().hex

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"POST {path} -> {exc.code}: {exc.read().decode()[:4000]}") from exc

    def run(self, prompt: dict, timeout: float = RUN_TIMEOUT_S) -> dict:
        """Queue ``prompt`` (API format) and wait for it; return its history entry, or fail with the server's error."""
        prompt_id = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"]["completed"] or entry["status"].get("status_str") == "error"):
                if entry["status"].get("status_str") == "error":
                    errors = [m for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
                    raise AssertionError(f"workflow failed: {json.dumps(errors)[:4000]}")
                return entry
            time.sleep(0.2)
        raise AssertionError(f"workflow did not finish in {timeout}s; server log: {self.log}")

    def run_error(self, prompt: dict, timeout: float = RUN_TIMEOUT_S) -> dict:
        """Queue ``prompt`` that must fail at execution; return the execution_error message."""
        prompt_id = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("status_str") == "error":
                return next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")
            if entry and entry.get("status", {}).get("completed"):
                raise AssertionError("the workflow was expected to fail but completed")
            time.sleep(0.2)
        raise AssertionError(f"workflow did not finish in {timeout}s")

    def latent(self, entry: dict, node_id: str) -> torch.Tensor:
        """The tensor a SaveLatent node wrote."""
        item = entry["outputs"][node_id]["latents"][0]
        path = self.base / "output" / item.get("subfolder", "") / item["filename"]
        return load_file(str(path))["latent_tensor"].float()

    def cached_nodes(self, entry: dict) -> set[str]:
        """Node ids ComfyUI served from its cache in this run (not executed again)."""
        cached: set[str] = set()
        for kind, data in entry["status"].get("messages", []):
            if kind == "execution_cached":
                cached.update(data.get("nodes", []))
        return cached


def _write_checkpoints(base: Path) -> dict:
    models = base / "models" / "diffusion_models"
    env = dict(os.environ, PYTHONPATH=str(COMFYUI))
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("tiny_models.py")), str(models)],
                          cwd=str(base), env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise AssertionError(f"writing the tiny checkpoints failed:\n{done.stderr[-4000:]}")
    return json.loads((models / "manifest.json").read_text())


@pytest.fixture(scope="session")
def comfy(tmp_path_factory: pytest.TempPathFactory) -> ComfyClient:
    """A headless ComfyUI on the CPU, loopback only, with this pack as its only custom node."""
    problem = host_problem()
    if problem is not None:
        pytest.skip(f"integration tests skipped: {problem}. {HOW_TO}")
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "comfy_int8_w8a8").symlink_to(REPO, target_is_directory=True)
    (base / "custom_nodes" / STUB_NODE_DIR).mkdir()
    (base / "custom_nodes" / STUB_NODE_DIR / "__init__.py").write_text(_STUB_NODE)
    files = _write_checkpoints(base)
    port = _free_port()
    log = base / "server.log"
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-api-nodes",
           "--base-directory", str(base), "--database-url", "sqlite:///:memory:", "--disable-all-custom-nodes",
           "--whitelist-custom-nodes", "comfy_int8_w8a8", STUB_NODE_DIR]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=str(COMFYUI), stdout=out, stderr=subprocess.STDOUT)
    client = ComfyClient(f"http://127.0.0.1:{port}", base, log, files)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited with {proc.returncode} at start-up:\n{log.read_text()[-4000:]}")
            try:
                client.get("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"ComfyUI did not start in {START_TIMEOUT_S}s:\n{log.read_text()[-4000:]}") from None
                time.sleep(0.5)
        yield client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

