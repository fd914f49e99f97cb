# Coding names are case-insensitive (RFC 9112 7).
requests = [dict(body=b"")]
