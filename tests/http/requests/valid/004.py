# Chunked body with a chunk extension (ignored).
requests = [dict(method="POST", body=b"hello world", keep_alive=True)]
