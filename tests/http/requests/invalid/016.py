status = 400
# A bare LF inside the head.
