status = 400
reason = "WebSocket upgrade request with a body"
# Found by the differential check (tests/http/test_h1_differential.py): the body of a
# WebSocket upgrade request was handed to the WebSocket as its first bytes (here: a text
# frame), where h11 reads it as the request body and switches after it (RFC 9110 §7.8).
