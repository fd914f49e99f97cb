status = 400
reason = 'Transfer-Encoding'
