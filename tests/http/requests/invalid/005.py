status = 400
reason = 'Transfer-Encoding'
# Only exactly `chunked` is understood.
