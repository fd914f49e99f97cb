requests = [dict(method="GET", target=b"/", raw_path=b"/", query_string=b"", http_version="1.1",
                 headers=[(b"host", b"example.com")], body=b"", keep_alive=True)]
