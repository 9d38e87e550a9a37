"""Descriptor pool of every generated module in swarm._proto (scripts/gen_proto.py)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
