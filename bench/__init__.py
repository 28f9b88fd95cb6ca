"""Benchmark harness: kvstore against real etcd, same workloads, same load generator."""
