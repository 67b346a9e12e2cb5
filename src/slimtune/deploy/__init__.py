"""Deployment: the INT4 inference kernel (int4.py) and exports to other runtimes (gguf_export.py).

Import the submodules directly; this package's init imports nothing, so that quant.linear can use
the kernel without importing the exporters (which import quant)."""
