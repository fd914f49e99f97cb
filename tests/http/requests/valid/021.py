# With WebSocket disabled (--ws none) the same request is plain HTTP.
limits = dict(websocket=False)
requests = [dict(raw_path=b"/ws", upgrade=None, body=b"")]
