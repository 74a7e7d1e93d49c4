"""Who is calling: verified tokens (static and OAuth JWT), their scopes, HTTP auth refusals."""
