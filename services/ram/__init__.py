"""RAM: identities, roles, policies, and the decisions everyone asks for."""
