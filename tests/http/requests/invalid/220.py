status = 400
reason = 'Transfer-Encoding'
# an empty coding.
