status = 400
# Control byte in a header value.
