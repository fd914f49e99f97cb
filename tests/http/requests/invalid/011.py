status = 400
# Chunk data not followed by CRLF.
