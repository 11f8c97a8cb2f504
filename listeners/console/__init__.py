"""The admin web console in one place: HTTP server, sessions and routes (server), password hashes, HTML pages,
inline SVG charts and key images."""
