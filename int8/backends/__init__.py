"""The int8 GEMM backends (reference, torch_int_mm, triton) and what they share; the registry picks one per device."""
