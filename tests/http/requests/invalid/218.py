status = 400
reason = 'Transfer-Encoding'
# chunked not final (RFC 9112 6.3).
