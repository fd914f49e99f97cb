status = 400
# Control byte in the target.
