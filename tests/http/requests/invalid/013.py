status = 400
# Chunk size overflow.
