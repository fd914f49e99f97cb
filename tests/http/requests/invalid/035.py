status = 400
reason = 'target'
# asterisk-form is for OPTIONS only.
