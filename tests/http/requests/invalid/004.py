status = 400
reason = 'Content-Length'
