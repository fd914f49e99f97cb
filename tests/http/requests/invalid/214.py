status = 400
reason = 'request line'
# ICE (SHOUTcast), which llhttp also speaks, is not HTTP.
