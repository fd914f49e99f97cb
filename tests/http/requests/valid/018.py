# One empty line before the request line is tolerated (RFC 9112 2.2).
requests = [dict()]
