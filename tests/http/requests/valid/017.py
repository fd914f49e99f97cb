# Names lower-cased, values raw (tab and obs-text allowed), order kept.
requests = [dict(headers=[(b"host", b"example.com"), (b"x-mixed-case", b"VaLuE"), (b"x-tab", b"a\tb"),
                          (b"x-utf8", b"caf\xc3\xa9"), (b"x-empty", b"")])]
