"""The status page on the sidecar (`/`): who may see what (web), the login sessions (sessions),
the HTML (render). README: Operating it, Status page."""
