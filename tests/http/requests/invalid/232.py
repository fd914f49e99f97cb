status = 400
reason = "invalid request line"
before = [{"method": "POST", "body": b"\x00"}]
# Found by the differential check (core-build's compiled run): the last body byte and the
# next request line share a line of the read, and the request-line check looked for
# "GET /" at its start, so RTSP/1.0 after a one-byte body was served as HTTP/1.0.
