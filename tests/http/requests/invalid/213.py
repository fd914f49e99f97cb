status = 400
reason = 'protocol'
# RTSP, which llhttp also speaks, is not HTTP.
