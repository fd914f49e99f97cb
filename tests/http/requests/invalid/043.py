status = 414
limits = dict(max_request_line=64)
