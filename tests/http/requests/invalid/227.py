status = 400
reason = 'request line'
# RTSP after a leading CRLF.
