status = 400
reason = 'chunk'
# Bad chunk size.
