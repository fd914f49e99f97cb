status = 400
# Empty field name.
