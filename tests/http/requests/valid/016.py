requests = [dict(raw_path=b"/", query_string=b"")]
