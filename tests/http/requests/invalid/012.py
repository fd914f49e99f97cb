status = 400
# Bare LF in chunk framing.
