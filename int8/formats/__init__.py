"""Checkpoint readers and writers (safetensors only; never unpickles)."""
