status = 400
# Whitespace before the first field.
