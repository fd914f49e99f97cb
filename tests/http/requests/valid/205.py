requests = [dict(raw_path=b'/x')]
# an HTTP request that mentions RTSP/ in a header is still served.
