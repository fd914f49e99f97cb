status = 400
reason = 'HTTP/1.0'
# RFC 9112 6.1: TE in HTTP/1.0 cannot be trusted.
