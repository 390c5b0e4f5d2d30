from edgeflow import Flow

flow = Flow("broken")
flow.source(undefined_name)  # noqa: F821
