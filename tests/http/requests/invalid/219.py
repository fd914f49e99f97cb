status = 400
reason = 'Transfer-Encoding'
# chunked twice.
