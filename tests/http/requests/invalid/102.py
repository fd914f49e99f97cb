status = 400
reason = "WebSocket upgrade request with a body"
# The chunked twin of 101: the chunk framing would have reached the WebSocket as frames.
