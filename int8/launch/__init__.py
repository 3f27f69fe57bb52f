"""The launch runtime: host facts, output allocation, config choice, TMA descriptors, compiled-kernel launches,
eager-plan recording and replay, autotuning and per-device workspaces. Below the backends, above the device code
of ``int8/kernels/``. Importing a module here imports Triton only where its kernels do."""
