status = 431
reason = 'too many'
limits = dict(max_header_count=5)
