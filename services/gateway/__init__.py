"""Gateway: the gRPC front door for other systems (validate, route; no image work)."""
