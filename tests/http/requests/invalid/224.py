status = 400
reason = 'request line'
# two spaces after the method (RFC 9112 3: one SP; llhttp skips them).
