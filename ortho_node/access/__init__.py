"""Who may use the node's HTTP edge besides console users: REST API bearer tokens, hashed at rest and scoped to a
role (tokens)."""
