status = 400
reason = "invalid request line"
# Found by the differential check: llhttp skips a bare LF (or CR) before a request line, and
# the request-line check read "\nGET" as the method, so RTSP/1.0 was served as HTTP/1.0.
