status = 501
reason = 'br'
# an unsupported coding before chunked (RFC 9112 6.1).
