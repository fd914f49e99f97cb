status = 400
# NUL in a header value.
