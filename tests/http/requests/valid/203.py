requests = [dict(raw_path=b'/', headers=[(b'host', b'[::1]:8080')])]
# absolute-form with an IPv6 literal and no path.
