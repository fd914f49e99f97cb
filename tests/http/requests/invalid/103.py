status = 400
reason = "invalid request line"
# Found by the differential check: llhttp takes runs of spaces between the parts of a
# request line, and the first RTSP/ICE check looked for single spaces only, so this request
# was served as HTTP/1.0.
