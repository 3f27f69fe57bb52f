"""Device code only: ``@triton.jit`` (and Gluon) bodies, their constexpr helpers and config tables. Launchers live in
``int8/launch/``; each kernel has a plain-torch reference in ``int8.quantize`` that the tests compare it with.
Modules here import Triton and the core modules (``int8/compat/`` for version-specific intrinsics), nothing above."""
