status = 400
reason = 'Content-Length'
# Two different Content-Length values.
