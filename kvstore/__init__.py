"""kvstore: a distributed key-value configuration store speaking the etcd v3 API."""

__version__ = "0.1.0"
