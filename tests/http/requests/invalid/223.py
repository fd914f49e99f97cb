status = 400
reason = ''
# a space inside an absolute-form authority.
