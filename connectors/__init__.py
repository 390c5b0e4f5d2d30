"""Sources and sinks (importable as ``edgeflow.connectors``).

Every connector states its delivery guarantee in its docstring.
"""
