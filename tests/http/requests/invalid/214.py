status = 400
reason = 'protocol'
# ICE (SHOUTcast), which llhttp also speaks, is not HTTP.
