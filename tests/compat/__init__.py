"""Compatibility tests: real etcd clients (etcdctl, python-etcd3) against a
real multi-process kvstore cluster, and differential tests against real etcd."""
