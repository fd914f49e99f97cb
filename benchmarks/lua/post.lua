-- wrk script: POST a 64 KiB body (the app echoes it back).
wrk.method = "POST"
wrk.body = string.rep("x", 65536)
wrk.headers["Content-Type"] = "application/octet-stream"
