status = 400
# Space before the colon (RFC 9112 5.1).
