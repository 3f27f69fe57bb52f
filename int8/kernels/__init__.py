"""Fast kernels. Each has a plain-torch reference in ``int8.quantize`` that the tests compare it with."""
