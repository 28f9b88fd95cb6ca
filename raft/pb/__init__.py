"""Generated protobuf/gRPC modules; regenerate with `python proto/generate.py`."""
