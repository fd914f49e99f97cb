status = 400
reason = 'Host'
# Two Host fields.
