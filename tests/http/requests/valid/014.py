requests = [dict(method="OPTIONS", target=b"*", raw_path=b"*")]
