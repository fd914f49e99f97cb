status = 400
reason = 'HTTP/0.9'
# HTTP/0.9 simple request.
