requests = [dict(raw_path=b'/x', query_string=b'y=1', headers=[(b'host', b'a.example')])]
# absolute-form: the target's authority replaces Host (RFC 9112 3.2.2).
