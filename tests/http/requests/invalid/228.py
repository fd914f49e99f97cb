status = 400
reason = 'request line'
before = [dict(method='GET')]
# a pipelined request with two spaces.
