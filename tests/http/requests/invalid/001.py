status = 400
reason = 'Content-Length'
# CL + TE (RFC 9112 6.1: request smuggling).
