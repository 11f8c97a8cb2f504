"""The admin web console in one place: Starlette routes (routes), signed sessions, CSRF and lock-out (sessions),
password hashes, HTML pages from Jinja2 templates (pages, templates/),
inline SVG charts and key images."""
