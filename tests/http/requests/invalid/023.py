status = 505
reason = 'HTTP/2'
# The HTTP/2 connection preface (prior knowledge) on a cleartext port.
