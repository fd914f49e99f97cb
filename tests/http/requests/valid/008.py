requests = [dict(keep_alive=False)]
