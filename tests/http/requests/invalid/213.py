status = 400
reason = 'request line'
# RTSP, which llhttp also speaks, is not HTTP.
