"""Console authentication and authorisation: sessions, CSRF, sign-in throttling, roles."""
