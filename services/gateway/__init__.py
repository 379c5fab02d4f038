"""Gateway: Alibaba's RPC-style OpenAPI over HTTP, in front of ram, sts and ecs."""
