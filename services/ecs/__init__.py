"""ECS control plane: instances, role attachment, the credential refresh schedule."""
