requests = [dict(http_version="1.0", keep_alive=True)]
