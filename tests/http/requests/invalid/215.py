status = 400
reason = 'request line'
before = [dict(method='GET')]
# a pipelined RTSP request after a valid one.
