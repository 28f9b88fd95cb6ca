"""The client API server: gRPC on our own HTTP/2 implementation."""
