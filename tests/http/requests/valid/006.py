# HTTP/1.0 needs no Host and closes by default.
requests = [dict(http_version="1.0", headers=[], keep_alive=False)]
