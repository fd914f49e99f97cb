status = 400
reason = 'protocol'
before = [dict(method='GET')]
# a pipelined RTSP request after a valid one.
