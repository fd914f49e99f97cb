status = 400
reason = 'Host'
# A broken pipelined request is answered in its turn.
before = [dict(raw_path=b"/ok")]
