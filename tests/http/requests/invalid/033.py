status = 400
reason = 'CONNECT'
# CONNECT is not supported.
