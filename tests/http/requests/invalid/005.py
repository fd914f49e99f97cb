status = 501
reason = 'gzip'
# A coding we do not implement before a final chunked: well-formed but unsupported (RFC 9112 6.1: 501).
