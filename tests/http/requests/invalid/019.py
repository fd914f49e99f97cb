status = 400
reason = 'HTTP/0.9'
