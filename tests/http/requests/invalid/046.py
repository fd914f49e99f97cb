status = 431
reason = 'trailer'
limits = dict(max_header_count=4)
# Trailers count against the same limits.
