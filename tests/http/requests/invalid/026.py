status = 400
# DEL in a header value.
