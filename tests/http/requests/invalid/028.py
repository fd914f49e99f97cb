status = 400
# Space inside a field name.
