status = 400
# A lone CR in a header value.
