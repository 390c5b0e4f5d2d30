"""Pure numpy kernels: windows, aggregations. No bytewax, no I/O."""
