"""Generated protobuf and gRPC code; never edited by hand (scripts/gen_proto.py)."""
