status = 431
limits = dict(max_header_size=64)
