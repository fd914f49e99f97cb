status = 400
reason = "invalid Transfer-Encoding"
# Found by make fuzz (the differential check): fastgate took "chunked;q=1" as chunked and
# handed the head to the app, then llhttp refused the framing; h11 refuses the head (501).
# Refused now before any head goes out: chunked has no parameters (RFC 9112 §7.1).
