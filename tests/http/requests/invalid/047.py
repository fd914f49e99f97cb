status = 431
reason = 'trailer'
limits = dict(max_header_size=64)
