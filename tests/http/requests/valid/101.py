# An empty body (Content-Length: 0) is no body: the upgrade goes ahead and the bytes after
# the head belong to the WebSocket (see invalid/101 for a real body).
requests = [dict(raw_path=b"/ws", upgrade=b"websocket", remainder=b"\x81\x80\x00\x00\x00\x00")]
