"""Report templates (Jinja2 HTML + print CSS). The top-level templates/ links here."""
